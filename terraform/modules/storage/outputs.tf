output "bucket_names" {
  description = "Bucket name per role (raw, augmented, normalized, artifacts)."
  value       = { for role, bucket in aws_s3_bucket.this : role => bucket.id }
}

output "bucket_arns" {
  description = "Bucket ARN per role."
  value       = { for role, bucket in aws_s3_bucket.this : role => bucket.arn }
}
