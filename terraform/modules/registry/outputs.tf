output "repository_names" {
  description = "Repository name per image."
  value       = { for image, repo in aws_ecr_repository.this : image => repo.name }
}

output "repository_urls" {
  description = "Repository URL per image (push to URL:TAG)."
  value       = { for image, repo in aws_ecr_repository.this : image => repo.repository_url }
}

output "repository_arns" {
  description = "Repository ARN per image."
  value       = { for image, repo in aws_ecr_repository.this : image => repo.arn }
}
