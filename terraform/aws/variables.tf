variable "region" {
  type        = string
  description = "AWS region of every resource (AWS_REGION for the app)."
  default     = "us-east-1"
}

variable "name_prefix" {
  type        = string
  description = "Prefix of the cluster, roles, repositories, queues and schedules."
  default     = "pixelpipe"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name_prefix))
    error_message = "name_prefix must be 2-31 lowercase letters, digits or '-', starting with a letter."
  }
}

variable "bucket_prefix" {
  type        = string
  description = "Globally unique prefix of the four buckets, e.g. acme-pixelpipe gives acme-pixelpipe-raw."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,50}$", var.bucket_prefix))
    error_message = "bucket_prefix must be 2-51 lowercase letters, digits, '.' or '-'."
  }
}

variable "tags" {
  type        = map(string)
  description = "Extra tags on every resource."
  default     = {}
}

variable "offline_plan" {
  type        = bool
  description = "Plan without AWS credentials (CI smoke test): skips the credential and account look-ups. Never apply with it."
  default     = false
}

variable "enable_sqs_ingest" {
  type        = bool
  description = "Announce new raw objects on an SQS queue (with a dead-letter queue) and set INGEST_MODE=sqs."
  default     = false
}

variable "raw_prefix" {
  type        = string
  description = "Prefix of the raw bucket the sensor (and the S3 notification) watches (RAW_PREFIX)."
  default     = "incoming"
}

variable "sse_algorithm" {
  type        = string
  description = "Default bucket encryption: aws:kms (with an S3 bucket key) or AES256."
  default     = "aws:kms"

  validation {
    condition     = contains(["aws:kms", "AES256"], var.sse_algorithm)
    error_message = "sse_algorithm must be aws:kms or AES256."
  }
}

variable "kms_key_arn" {
  type        = string
  description = "Customer managed KMS key for the buckets; null uses the AWS managed key aws/s3."
  default     = null
}

variable "force_destroy" {
  type        = bool
  description = "Let `destroy` remove non-empty buckets and repositories (throwaway stacks only)."
  default     = false
}

variable "image_tag" {
  type        = string
  description = "Immutable tag of the pushed pipeline and training images to run, e.g. the git commit. Unset on the first apply: the services stay at zero tasks and the schedules disabled until it names pushed images."
  default     = null

  validation {
    condition     = var.image_tag == null || can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", coalesce(var.image_tag, "x")))
    error_message = "image_tag must be a Docker tag: up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'."
  }
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for the tasks and GPU instances, with routes to S3, ECR and CloudWatch."
}

variable "security_group_ids" {
  type        = list(string)
  description = "Security groups of the tasks and GPU instances; Postgres and MLflow must be reachable."
}

variable "mlflow_tracking_uri" {
  type        = string
  description = "MLflow tracking server the training and benchmarks log to (MLFLOW_TRACKING_URI)."
}

variable "dagster_postgres_host" {
  type        = string
  description = "Host of the Postgres that stores Dagster runs, events and schedules."
}

variable "dagster_postgres_port" {
  type        = number
  description = "Port of the Dagster Postgres."
  default     = 5432
}

variable "dagster_postgres_database" {
  type        = string
  description = "Database of the Dagster storage."
  default     = "dagster"
}

variable "dagster_postgres_username" {
  type        = string
  description = "User Dagster connects as."
  default     = "dagster"
}

variable "dagster_postgres_password_secret_arn" {
  type        = string
  description = "Secrets Manager secret holding the Dagster Postgres password (injected, never in state)."
}

variable "dagster_postgres_password_kms_key_arn" {
  type        = string
  description = "Customer managed KMS key the Postgres password secret is encrypted with; the task execution role gets kms:Decrypt on it through Secrets Manager. null: the AWS managed key, which needs no grant."
  default     = null
}

variable "gpu_instance_type" {
  type        = string
  description = "GPU instance type for training and the performance suite."
  default     = "g5.xlarge"
}

variable "gpu_ami_id" {
  type        = string
  description = "AMI of the GPU instances; null uses the recommended ECS GPU-optimized Amazon Linux 2023 AMI (from its public SSM parameter)."
  default     = null
}

variable "gpu_max_instances" {
  type        = number
  description = "Most GPU instances at once; the group scales in to zero when idle."
  default     = 2
}

variable "retraining_schedule" {
  type        = string
  description = "When the nightly retraining starts (EventBridge Scheduler expression)."
  default     = "cron(0 2 * * ? *)"
}

variable "performance_schedule" {
  type        = string
  description = "When the weekly performance suite starts (EventBridge Scheduler expression)."
  default     = "cron(0 4 ? * SUN *)"
}

variable "schedule_timezone" {
  type        = string
  description = "IANA time zone of the schedules."
  default     = "UTC"
}

variable "log_retention_days" {
  type        = number
  description = "Days container logs are kept."
  default     = 30
}
