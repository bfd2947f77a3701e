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

variable "kept_images" {
  type        = number
  description = "Most images kept per repository; older ones expire."
  default     = 50
}

variable "force_delete" {
  type        = bool
  description = "Let `destroy` delete repositories that still hold images (test stacks only)."
  default     = false
}
