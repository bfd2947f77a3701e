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

output "s3_endpoint" {
  description = "The S3-compatible endpoint the buckets live on (S3_ENDPOINT_URL)."
  value       = var.s3_endpoint
}

output "app_env" {
  description = "pixelpipe settings for this stack (credentials excluded): environment variable name -> value."
  value       = local.app_env
}
