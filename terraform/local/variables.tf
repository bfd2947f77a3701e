variable "s3_endpoint" {
  type        = string
  description = "S3-compatible endpoint (RustFS, SeaweedFS, MinIO), e.g. http://127.0.0.1:9000 (S3_ENDPOINT_URL)."

  validation {
    condition     = can(regex("^https?://", var.s3_endpoint))
    error_message = "s3_endpoint must be an http:// or https:// URL."
  }
}

variable "access_key" {
  type        = string
  description = "Access key of the S3-compatible server (set TF_VAR_access_key; never commit it)."
  sensitive   = true
}

variable "secret_key" {
  type        = string
  description = "Secret key of the S3-compatible server (set TF_VAR_secret_key; never commit it)."
  sensitive   = true
}

variable "region" {
  type        = string
  description = "Region the server expects in signatures (AWS_REGION)."
  default     = "us-east-1"
}

variable "bucket_prefix" {
  type        = string
  description = "Prefix of the four buckets; the default gives pixelpipe's default bucket names."
  default     = "pixelpipe"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,50}$", var.bucket_prefix))
    error_message = "bucket_prefix must be 2-51 lowercase letters, digits, '.' or '-'."
  }
}

variable "raw_prefix" {
  type        = string
  description = "Prefix of the raw bucket the sensor watches (RAW_PREFIX)."
  default     = "incoming"
}

variable "sse_algorithm" {
  type        = string
  description = "Default bucket encryption (AES256 or aws:kms) where the server has a KMS; null leaves it off."
  default     = null
}

variable "versioning" {
  type        = bool
  description = "Enable bucket versioning (RustFS and MinIO support it; SeaweedFS partly)."
  default     = false
}

variable "lifecycle_rules" {
  type        = bool
  description = "Attach the lifecycle rules of the AWS variant (only where the server implements them)."
  default     = false
}

variable "lifecycle_transitions" {
  type        = bool
  description = "With lifecycle_rules: also move reports to STANDARD_IA and GLACIER_IR (SeaweedFS answers 501 to transitions: set false there)."
  default     = true
}

variable "force_destroy" {
  type        = bool
  description = "Let `destroy` remove buckets that still hold objects."
  default     = false
}
