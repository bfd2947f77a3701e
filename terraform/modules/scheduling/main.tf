# EventBridge Scheduler starts the GPU tasks: nightly retraining, weekly performance suite.

locals {
  schedules = {
    "nightly-retraining" = {
      description         = "Retrain the classifier on the newest dataset index (Dagster training_job)."
      expression          = var.retraining_schedule
      task_definition_arn = var.retraining_task_definition_arn
    }
    "weekly-performance-suite" = {
      description         = "Stage 2 multi-variant and training throughput benchmarks."
      expression          = var.performance_schedule
      task_definition_arn = var.performance_task_definition_arn
    }
  }
}

resource "aws_scheduler_schedule_group" "this" {
  name = var.name_prefix
}

resource "aws_scheduler_schedule" "this" {
  for_each = local.schedules

  name                         = "${var.name_prefix}-${each.key}"
  group_name                   = aws_scheduler_schedule_group.this.name
  description                  = each.value.description
  schedule_expression          = each.value.expression
  schedule_expression_timezone = var.timezone
  state                        = var.enabled ? "ENABLED" : "DISABLED"

  flexible_time_window {
    mode                      = var.flexible_window_minutes > 0 ? "FLEXIBLE" : "OFF"
    maximum_window_in_minutes = var.flexible_window_minutes > 0 ? var.flexible_window_minutes : null
  }

  target {
    arn      = var.cluster_arn
    role_arn = var.role_arn

    ecs_parameters {
      task_definition_arn = each.value.task_definition_arn
      task_count          = 1

      capacity_provider_strategy {
        capacity_provider = var.capacity_provider
        weight            = 1
      }

      network_configuration {
        subnets          = var.subnet_ids
        security_groups  = var.security_group_ids
        assign_public_ip = false
      }
    }

    # A missed start is retried for an hour, then dropped: the next night retrains anyway.
    retry_policy {
      maximum_event_age_in_seconds = 3600
      maximum_retry_attempts       = 3
    }
  }
}
