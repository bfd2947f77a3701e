variable "name_prefix" {
  type        = string
  description = "Prefix of the repository names, e.g. pixelpipe gives pixelpipe/pipeline."
}

variable "repositories" {
  type        = list(string)
  description = "Images to host: the Dagster code and run workers, the GPU training image and the inference service."
  default     = ["pipeline", "training", "inference"]
}

variable "kms_key_arn" {
  type        = string
  description = "Customer managed KMS key for image layers; null uses AES256."
  default     = null
}

variable "untagged_image_days" {
  type        = number
  description = "Days an untagged image (a failed or superseded push) is kept."
  default     = 7
}

variable "scratch_tag_prefixes" {
  type        = list(string)
  description = "Tag prefixes of scratch builds (branches, CI) that expire beyond kept_scratch_images; a deployed tag must not use them."
  default     = ["dev-", "ci-"]
}

variable "kept_scratch_images" {
  type        = number
  description = "Newest scratch builds kept per repository; older ones expire."
  default     = 20
}

variable "protected_tag" {
  type        = string
  description = "The tag deployed now (image_tag); the plan fails if the lifecycle policy could expire it."
  default     = null
}

variable "force_delete" {
  type        = bool
  description = "Let `destroy` delete repositories that still hold images (test stacks only)."
  default     = false
}
