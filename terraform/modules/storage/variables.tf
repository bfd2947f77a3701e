variable "buckets" {
  type        = map(string)
  description = "Bucket name per role; the roles are raw, augmented, normalized and artifacts."

  validation {
    condition     = toset(keys(var.buckets)) == toset(["raw", "augmented", "normalized", "artifacts"])
    error_message = "buckets needs exactly the roles raw, augmented, normalized and artifacts."
  }

  validation {
    condition     = alltrue([for name in values(var.buckets) : can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", name))])
    error_message = "Each bucket name must be 3-63 lowercase letters, digits, '.' or '-'."
  }
}

variable "force_destroy" {
  type        = bool
  description = "Let `destroy` delete buckets that still hold objects (test stacks only)."
  default     = false
}

variable "block_public_access" {
  type        = bool
  description = "Block every form of public access and disable ACLs (AWS S3 only: most S3-compatible servers lack these APIs)."
  default     = true
}

variable "enforce_tls" {
  type        = bool
  description = "Attach a bucket policy that denies requests made without TLS (AWS S3 only)."
  default     = true
}

variable "sse_algorithm" {
  type        = string
  description = "Default server-side encryption: aws:kms or AES256; null leaves it to the server (for S3-compatible servers without a KMS)."
  default     = "aws:kms"

  validation {
    condition     = var.sse_algorithm == null || contains(["aws:kms", "AES256"], coalesce(var.sse_algorithm, "none"))
    error_message = "sse_algorithm must be aws:kms, AES256 or null."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "Customer managed KMS key for aws:kms; null uses the AWS managed key aws/s3."
  default     = null
}

variable "versioning" {
  type        = bool
  description = "Keep object versions so an overwritten or deleted object can be recovered."
  default     = true
}

variable "lifecycle_rules" {
  type        = bool
  description = "Attach lifecycle rules (abort stale multipart uploads, expire old versions, tier reports)."
  default     = true
}

variable "lifecycle_transitions" {
  type        = bool
  description = "Include the storage-class transitions of reports (STANDARD_IA, GLACIER_IR); off for servers that answer 501 to them (SeaweedFS)."
  default     = true
}

variable "abort_multipart_days" {
  type        = number
  description = "Days after which an unfinished multipart upload is aborted and its parts deleted."
  default     = 7
}

variable "noncurrent_version_days" {
  type        = number
  description = "Days a replaced or deleted object version is kept before it expires."
  default     = 30
}

variable "report_prefixes" {
  type        = list(string)
  description = "Prefixes in the artifacts bucket that hold performance results and test reports."
  default     = ["perf/", "test-reports/"]
}

variable "report_infrequent_access_days" {
  type        = number
  description = "Days after which reports move to STANDARD_IA (at least 30)."
  default     = 30

  validation {
    condition     = var.report_infrequent_access_days >= 30
    error_message = "S3 moves objects to STANDARD_IA after 30 days at the earliest."
  }
}

variable "report_archive_days" {
  type        = number
  description = "Days after which reports move to GLACIER_IR (more than report_infrequent_access_days + 30)."
  default     = 90
}
