variable "name_prefix" {
  type        = string
  description = "Prefix of every role name."
}

variable "bucket_arns" {
  type        = map(string)
  description = "Bucket ARN per role (raw, augmented, normalized, artifacts); raw is read-only for tasks."
}

variable "queue_arns" {
  type        = list(string)
  description = "ARNs of the ingest queues tasks consume (empty when SQS ingest is off)."
  default     = []
}

variable "dlq_arns" {
  type        = list(string)
  description = "Dead-letter queues of the ingest queues: the SQS sensor moves poison messages there."
  default     = []
}

variable "kms_key_arn" {
  type        = string
  description = "Customer managed KMS key of the buckets, if any; tasks may use it for S3 only."
  default     = null
}

variable "repository_arns" {
  type        = list(string)
  description = "ECR repositories the execution role may pull from."
}

variable "log_group_arn" {
  type        = string
  description = "CloudWatch log group the containers write to."
}

variable "secret_arns" {
  type        = list(string)
  description = "Secrets Manager secrets injected into containers (e.g. the Dagster Postgres password)."
  default     = []
}

variable "secret_kms_key_arns" {
  type        = list(string)
  description = "Customer managed KMS keys the injected secrets are encrypted with (empty for the AWS managed key)."
  default     = []
}

variable "cluster_arn" {
  type        = string
  description = "ECS cluster that runs and scheduled tasks are confined to."
}

variable "run_task_definition_arns" {
  type        = list(string)
  description = "Task definitions Dagster's EcsRunLauncher may start (any revision)."
}

variable "scheduled_task_definition_arns" {
  type        = list(string)
  description = "Task definitions EventBridge Scheduler may start (any revision)."
}

variable "schedule_group_arn" {
  type        = string
  description = "Schedule group whose schedules may assume the scheduler role."
}
