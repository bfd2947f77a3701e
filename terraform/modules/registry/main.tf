# One ECR repository per image, tags immutable so a deployed tag always means the same image.

resource "aws_ecr_repository" "this" {
  for_each = toset(var.repositories)

  name                 = "${var.name_prefix}/${each.key}"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = var.kms_key_arn == null ? "AES256" : "KMS"
    kms_key         = var.kms_key_arn
  }
}

# Release tags (what image_tag deploys) never expire here: removing one is a deliberate act.
# Only untagged images and scratch builds under scratch_tag_prefixes are pruned.
resource "aws_ecr_lifecycle_policy" "this" {
  for_each = toset(var.repositories)

  repository = aws_ecr_repository.this[each.key].name

  policy = jsonencode({
    rules = [
      {
        rulePriority = 1
        description  = "Expire untagged images"
        selection = {
          tagStatus   = "untagged"
          countType   = "sinceImagePushed"
          countUnit   = "days"
          countNumber = var.untagged_image_days
        }
        action = { type = "expire" }
      },
      {
        rulePriority = 2
        description  = "Keep the newest scratch builds only"
        selection = {
          tagStatus     = "tagged"
          tagPrefixList = var.scratch_tag_prefixes
          countType     = "imageCountMoreThan"
          countNumber   = var.kept_scratch_images
        }
        action = { type = "expire" }
      },
    ]
  })

  lifecycle {
    precondition {
      condition     = var.protected_tag == null || !anytrue([for p in var.scratch_tag_prefixes : startswith(coalesce(var.protected_tag, "-"), p)])
      error_message = "image_tag ${coalesce(var.protected_tag, "-")} starts with a scratch prefix (${join(", ", var.scratch_tag_prefixes)}) that the ECR lifecycle policy expires: deploy a release tag."
    }
  }
}
