# S3 event notifications from the raw bucket to SQS: the alternative to listing (INGEST_MODE=sqs).

resource "aws_sqs_queue" "dlq" {
  name                      = "${var.name}-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "ingest" {
  name                       = var.name
  visibility_timeout_seconds = var.visibility_timeout_seconds
  message_retention_seconds  = var.message_retention_seconds
  receive_wait_time_seconds  = 20
  # SSE-SQS rather than a KMS key: S3 cannot publish to a queue under the AWS managed aws/sqs key.
  sqs_managed_sse_enabled = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.ingest.arn]
  })
}

data "aws_iam_policy_document" "ingest" {
  statement {
    sid       = "AllowRawBucketNotifications"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.ingest.arn]

    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [var.source_bucket_arn]
    }

    # Bucket names are global: the account check stops a re-created bucket elsewhere from sending.
    dynamic "condition" {
      for_each = var.source_account_id == null ? [] : [var.source_account_id]

      content {
        test     = "StringEquals"
        variable = "aws:SourceAccount"
        values   = [condition.value]
      }
    }
  }
}

resource "aws_sqs_queue_policy" "ingest" {
  queue_url = aws_sqs_queue.ingest.id
  policy    = data.aws_iam_policy_document.ingest.json
}

resource "aws_s3_bucket_notification" "raw" {
  bucket = var.source_bucket_id

  queue {
    id            = "pixelpipe-raw-ingest"
    queue_arn     = aws_sqs_queue.ingest.arn
    events        = ["s3:ObjectCreated:*"]
    filter_prefix = var.filter_prefix
  }

  # S3 sends a test event on creation and refuses the configuration if it cannot deliver it.
  depends_on = [aws_sqs_queue_policy.ingest]
}
