output "execution_role_arn" {
  description = "Task execution role: pulls images, writes logs, reads injected secrets."
  value       = aws_iam_role.execution.arn
}

output "task_role_arn" {
  description = "Role of run workers, training and performance tasks: the buckets and the queue."
  value       = aws_iam_role.task.arn
}

output "orchestrator_role_arn" {
  description = "Role of the Dagster webserver and daemon: data access plus launching runs."
  value       = aws_iam_role.orchestrator.arn
}

output "scheduler_role_arn" {
  description = "Role EventBridge Scheduler assumes to start the scheduled tasks."
  value       = aws_iam_role.scheduler.arn
}

output "instance_profile_name" {
  description = "Instance profile of the GPU container instances."
  value       = aws_iam_instance_profile.instance.name
}
