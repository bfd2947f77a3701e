# Least-privilege roles: one to start containers, one for run workers, one for the Dagster
# webserver/daemon (which also launch runs), one for EventBridge Scheduler, one for GPU hosts.

locals {
  writable_bucket_arns = [for role, arn in var.bucket_arns : arn if role != "raw"]
  # RunTask is granted per task definition family, whatever its revision.
  run_families       = [for arn in var.run_task_definition_arns : replace(arn, "/:[0-9]+$/", ":*")]
  scheduled_families = [for arn in var.scheduled_task_definition_arns : replace(arn, "/:[0-9]+$/", ":*")]
  cluster_tasks      = "${replace(var.cluster_arn, ":cluster/", ":task/")}/*"
}

data "aws_iam_policy_document" "ecs_tasks_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# --- task execution role: pull images, write logs, read the injected secrets ---------------

resource "aws_iam_role" "execution" {
  name               = "${var.name_prefix}-task-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PullImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = var.repository_arns
  }

  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${var.log_group_arn}:*"]
  }

  dynamic "statement" {
    for_each = length(var.secret_arns) > 0 ? [1] : []

    content {
      sid       = "ReadInjectedSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = var.secret_arns
    }
  }

  # A secret under a customer managed key cannot be read without Decrypt on that key.
  dynamic "statement" {
    for_each = length(var.secret_kms_key_arns) > 0 ? [1] : []

    content {
      sid       = "DecryptInjectedSecrets"
      actions   = ["kms:Decrypt"]
      resources = var.secret_kms_key_arns

      condition {
        test     = "StringLike"
        variable = "kms:ViaService"
        values   = ["secretsmanager.*.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-log-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# --- data access shared by run workers and the Dagster services -----------------------------

data "aws_iam_policy_document" "data" {
  statement {
    sid = "ListBuckets"
    actions = [
      "s3:GetBucketLocation",
      "s3:ListBucket",
      "s3:ListBucketMultipartUploads",
    ]
    resources = values(var.bucket_arns)
  }

  statement {
    sid       = "ReadRawImages"
    actions   = ["s3:GetObject"]
    resources = ["${var.bucket_arns["raw"]}/*"]
  }

  statement {
    sid = "WriteOutputs"
    actions = [
      "s3:AbortMultipartUpload",
      "s3:DeleteObject",
      "s3:GetObject",
      "s3:ListMultipartUploadParts",
      "s3:PutObject",
    ]
    resources = [for arn in local.writable_bucket_arns : "${arn}/*"]
  }

  dynamic "statement" {
    for_each = length(var.queue_arns) > 0 ? [1] : []

    content {
      sid = "ConsumeIngestEvents"
      actions = [
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:ReceiveMessage",
      ]
      resources = var.queue_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.dlq_arns) > 0 ? [1] : []
    content {
      sid       = "SendPoisonEventsToTheDeadLetterQueue"
      actions   = ["sqs:GetQueueUrl", "sqs:SendMessage"]
      resources = var.dlq_arns
    }
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "UseBucketKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]

      condition {
        test     = "StringLike"
        variable = "kms:ViaService"
        values   = ["s3.*.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role" "task" {
  name               = "${var.name_prefix}-run-worker"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

resource "aws_iam_role_policy" "task_data" {
  name   = "pixelpipe-data"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.data.json
}

# --- Dagster webserver and daemon: data access plus EcsRunLauncher ---------------------------

resource "aws_iam_role" "orchestrator" {
  name               = "${var.name_prefix}-dagster"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

resource "aws_iam_role_policy" "orchestrator_data" {
  name   = "pixelpipe-data"
  role   = aws_iam_role.orchestrator.id
  policy = data.aws_iam_policy_document.data.json
}

data "aws_iam_policy_document" "launcher" {
  statement {
    sid       = "LaunchRuns"
    actions   = ["ecs:RunTask"]
    resources = local.run_families

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.cluster_arn]
    }
  }

  statement {
    sid       = "TagLaunchedRuns"
    actions   = ["ecs:TagResource"]
    resources = [local.cluster_tasks]

    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RunTask"]
    }
  }

  statement {
    sid       = "WatchRuns"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = [local.cluster_tasks]
  }

  statement {
    # Neither has resource-level permissions. use_current_ecs_task_config (deploy/dagster.yaml)
    # reads the daemon's own subnets and security groups from its network interface.
    sid       = "ReadTaskDefinitionsAndNetwork"
    actions   = ["ecs:DescribeTaskDefinition", "ec2:DescribeNetworkInterfaces"]
    resources = ["*"]
  }

  statement {
    sid       = "PassRunRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.task.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "orchestrator_launcher" {
  name   = "ecs-run-launcher"
  role   = aws_iam_role.orchestrator.id
  policy = data.aws_iam_policy_document.launcher.json
}

# --- EventBridge Scheduler: start the scheduled tasks and nothing else ------------------------

data "aws_iam_policy_document" "scheduler_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [var.schedule_group_arn]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  name               = "${var.name_prefix}-scheduler"
  assume_role_policy = data.aws_iam_policy_document.scheduler_trust.json
}

data "aws_iam_policy_document" "scheduler" {
  statement {
    sid       = "RunScheduledTasks"
    actions   = ["ecs:RunTask"]
    resources = local.scheduled_families

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [var.cluster_arn]
    }
  }

  statement {
    sid       = "PassTaskRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.task.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "scheduler" {
  name   = "run-scheduled-tasks"
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler.json
}

# --- GPU container instances ---------------------------------------------------------------

data "aws_iam_policy_document" "ec2_trust" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_partition" "current" {}

resource "aws_iam_role" "instance" {
  name               = "${var.name_prefix}-gpu-instance"
  assume_role_policy = data.aws_iam_policy_document.ec2_trust.json
}

resource "aws_iam_role_policy_attachment" "instance" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "instance" {
  name = "${var.name_prefix}-gpu-instance"
  role = aws_iam_role.instance.name
}
