# The four pixelpipe buckets: raw uploads, Stage 1 and Stage 2 outputs, and artifacts
# (batch listings, reports, performance results, MLflow artifacts).

locals {
  # Settings that only AWS S3 implements are switched per bucket by these maps.
  private_buckets   = var.block_public_access ? var.buckets : {}
  tls_buckets       = var.enforce_tls ? var.buckets : {}
  encrypted_buckets = var.sse_algorithm == null ? {} : var.buckets
  versioned_buckets = var.versioning ? var.buckets : {}
  lifecycle_buckets = var.lifecycle_rules ? var.buckets : {}
}

resource "aws_s3_bucket" "this" {
  for_each = var.buckets

  bucket        = each.value
  force_destroy = var.force_destroy

  tags = {
    "pixelpipe:role" = each.key
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = local.private_buckets

  bucket                  = aws_s3_bucket.this[each.key].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = local.private_buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = local.encrypted_buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.sse_algorithm
      kms_master_key_id = var.sse_algorithm == "aws:kms" ? var.kms_key_arn : null
    }
    # An S3 bucket key cuts KMS requests (and their cost) by orders of magnitude.
    bucket_key_enabled = var.sse_algorithm == "aws:kms"
  }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = local.versioned_buckets

  bucket = aws_s3_bucket.this[each.key].id

  versioning_configuration {
    status = "Enabled"
  }
}

data "aws_iam_policy_document" "tls_only" {
  for_each = local.tls_buckets

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.this[each.key].arn,
      "${aws_s3_bucket.this[each.key].arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  for_each = local.tls_buckets

  bucket = aws_s3_bucket.this[each.key].id
  policy = data.aws_iam_policy_document.tls_only[each.key].json

  # S3 rejects concurrent changes to one bucket's access settings.
  depends_on = [aws_s3_bucket_public_access_block.this]
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = local.lifecycle_buckets

  bucket = aws_s3_bucket.this[each.key].id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_multipart_days
    }
  }

  rule {
    id     = "expire-noncurrent-versions"
    status = var.versioning ? "Enabled" : "Disabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
  }

  dynamic "rule" {
    for_each = each.key == "artifacts" && var.lifecycle_transitions ? var.report_prefixes : []

    content {
      id     = "tier-${trimsuffix(rule.value, "/")}"
      status = "Enabled"

      filter {
        prefix = rule.value
      }

      transition {
        days          = var.report_infrequent_access_days
        storage_class = "STANDARD_IA"
      }

      transition {
        days          = var.report_archive_days
        storage_class = "GLACIER_IR"
      }
    }
  }

  # Lifecycle rules on noncurrent versions need versioning to be configured first.
  depends_on = [aws_s3_bucket_versioning.this]
}
