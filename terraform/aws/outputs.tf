output "raw_bucket" {
  description = "Bucket users upload raw images to (RAW_BUCKET)."
  value       = module.storage.bucket_names["raw"]
}

output "augmented_bucket" {
  description = "Stage 1 outputs (AUGMENTED_BUCKET)."
  value       = module.storage.bucket_names["augmented"]
}

output "normalized_bucket" {
  description = "Stage 2 outputs (NORMALIZED_BUCKET)."
  value       = module.storage.bucket_names["normalized"]
}

output "artifacts_bucket" {
  description = "Batch listings, reports, performance results, MLflow artifacts (ARTIFACTS_BUCKET)."
  value       = module.storage.bucket_names["artifacts"]
}

output "bucket_names" {
  description = "Bucket name per role."
  value       = module.storage.bucket_names
}

output "ecr_repository_names" {
  description = "ECR repository name per image (pipeline, training, inference)."
  value       = module.registry.repository_names
}

output "ecr_repository_urls" {
  description = "ECR repository URL per image: docker push URL:TAG."
  value       = module.registry.repository_urls
}

output "sqs_queue_url" {
  description = "Ingest queue URL (null unless enable_sqs_ingest)."
  value       = local.queue_url
}

output "sqs_queue_arn" {
  description = "Ingest queue ARN (null unless enable_sqs_ingest)."
  value       = one(module.queues[*].queue_arn)
}

output "sqs_dlq_url" {
  description = "Dead-letter queue URL (null unless enable_sqs_ingest)."
  value       = one(module.queues[*].dlq_url)
}

output "sqs_dlq_arn" {
  description = "Dead-letter queue ARN (null unless enable_sqs_ingest)."
  value       = one(module.queues[*].dlq_arn)
}

output "ecs_cluster_name" {
  description = "ECS cluster name."
  value       = module.compute.cluster_name
}

output "ecs_cluster_arn" {
  description = "ECS cluster ARN."
  value       = module.compute.cluster_arn
}

output "ecs_task_definition_arns" {
  description = "Task definition ARN per task (webserver, daemon, run, training, performance)."
  value       = module.compute.task_definition_arns
}

output "ecs_service_names" {
  description = "ECS service per Dagster component."
  value       = module.compute.service_names
}

output "gpu_capacity_provider" {
  description = "Capacity provider of the GPU instances."
  value       = module.compute.gpu_capacity_provider
}

output "log_group_name" {
  description = "CloudWatch log group of every container."
  value       = module.compute.log_group_name
}

output "schedule_group" {
  description = "EventBridge Scheduler group of the schedules."
  value       = module.scheduling.schedule_group_name
}

output "schedule_names" {
  description = "Schedule name per job (nightly-retraining, weekly-performance-suite)."
  value       = module.scheduling.schedule_names
}

output "task_execution_role_arn" {
  description = "Task execution role ARN."
  value       = module.iam.execution_role_arn
}

output "task_role_arn" {
  description = "Run worker / training task role ARN."
  value       = module.iam.task_role_arn
}

output "orchestrator_role_arn" {
  description = "Dagster webserver and daemon role ARN."
  value       = module.iam.orchestrator_role_arn
}

output "scheduler_role_arn" {
  description = "EventBridge Scheduler role ARN."
  value       = module.iam.scheduler_role_arn
}

output "app_env" {
  description = "pixelpipe settings for this deployment: environment variable name -> value."
  value       = local.app_env
}
