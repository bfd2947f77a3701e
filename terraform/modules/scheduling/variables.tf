variable "name_prefix" {
  type        = string
  description = "Name of the schedule group and prefix of every schedule."
}

variable "cluster_arn" {
  type        = string
  description = "ECS cluster the scheduled tasks run in."
}

variable "role_arn" {
  type        = string
  description = "Role EventBridge Scheduler assumes to call ecs:RunTask."
}

variable "capacity_provider" {
  type        = string
  description = "Capacity provider (GPU) the scheduled tasks are placed on."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Subnets of the scheduled tasks."
}

variable "security_group_ids" {
  type        = list(string)
  description = "Security groups of the scheduled tasks."
}

variable "retraining_task_definition_arn" {
  type        = string
  description = "Task definition of the nightly retraining."
}

variable "performance_task_definition_arn" {
  type        = string
  description = "Task definition of the weekly performance suite."
}

variable "retraining_schedule" {
  type        = string
  description = "When retraining runs (EventBridge Scheduler cron or rate expression)."
  default     = "cron(0 2 * * ? *)"
}

variable "performance_schedule" {
  type        = string
  description = "When the performance suite runs (EventBridge Scheduler cron or rate expression)."
  default     = "cron(0 4 ? * SUN *)"
}

variable "timezone" {
  type        = string
  description = "IANA time zone the schedules are evaluated in."
  default     = "UTC"
}

variable "flexible_window_minutes" {
  type        = number
  description = "Window in which a schedule may start, spreading load; 0 starts exactly on time."
  default     = 15
}

variable "enabled" {
  type        = bool
  description = "Whether the schedules fire (false keeps them, disabled)."
  default     = true
}
