variable "name" {
  type        = string
  description = "Name of the ingest queue; the dead-letter queue gets the suffix -dlq."
}

variable "source_bucket_id" {
  type        = string
  description = "Name of the raw bucket whose new objects are announced on the queue."
}

variable "source_bucket_arn" {
  type        = string
  description = "ARN of the raw bucket: the only sender the queue policy accepts."
}

variable "source_account_id" {
  type        = string
  description = "Account that owns the raw bucket; when set the queue policy also checks aws:SourceAccount."
  default     = null
}

variable "filter_prefix" {
  type        = string
  description = "Only objects under this prefix are announced (RAW_PREFIX plus '/')."
  default     = "incoming/"
}

variable "visibility_timeout_seconds" {
  type        = number
  description = "How long a received message stays hidden while the sensor turns it into a batch."
  default     = 300
}

variable "message_retention_seconds" {
  type        = number
  description = "How long an unread event stays on the ingest queue."
  default     = 345600
}

variable "max_receive_count" {
  type        = number
  description = "Receives after which a message that keeps failing moves to the dead-letter queue."
  default     = 5
}
