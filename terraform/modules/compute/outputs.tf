output "cluster_name" {
  description = "ECS cluster name."
  value       = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  description = "ECS cluster ARN."
  value       = aws_ecs_cluster.this.arn
}

output "task_definition_arns" {
  description = "Task definition ARN per task: webserver, daemon, run, training, performance."
  value = merge(
    { for name, td in aws_ecs_task_definition.fargate : name => td.arn },
    { for name, td in aws_ecs_task_definition.gpu : name => td.arn },
  )
}

output "gpu_capacity_provider" {
  description = "Capacity provider of the GPU instances."
  value       = aws_ecs_capacity_provider.gpu.name
}

output "service_names" {
  description = "ECS service per Dagster component (webserver, daemon)."
  value       = { for name, svc in aws_ecs_service.dagster : name => svc.name }
}

output "log_group_name" {
  description = "CloudWatch log group of every container."
  value       = aws_cloudwatch_log_group.this.name
}

output "log_group_arn" {
  description = "ARN of the CloudWatch log group."
  value       = aws_cloudwatch_log_group.this.arn
}
