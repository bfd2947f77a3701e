# pixelpipe on AWS: buckets, image registry, optional SQS ingest, ECS (Dagster + GPU) and
# EventBridge Scheduler, with least-privilege roles.

provider "aws" {
  region = var.region

  skip_credentials_validation = var.offline_plan
  skip_requesting_account_id  = var.offline_plan
  skip_metadata_api_check     = var.offline_plan

  default_tags {
    tags = merge({ project = "pixelpipe", "managed-by" = "terraform" }, var.tags)
  }
}

data "aws_caller_identity" "current" {
  count = var.offline_plan ? 0 : 1
}

locals {
  bucket_roles = ["raw", "augmented", "normalized", "artifacts"]
  bucket_names = { for role in local.bucket_roles : role => "${var.bucket_prefix}-${role}" }
  queue_url    = one(module.queues[*].queue_url)

  # An offline plan cannot read the AMI's SSM parameter: a placeholder stands in (offline plans
  # are never applied).
  gpu_ami_id = var.offline_plan ? coalesce(var.gpu_ami_id, "ami-00000000000000000") : var.gpu_ami_id

  # The one Dagster instance config: the images carry the same file.
  dagster_instance_yaml = file("${path.module}/../../deploy/dagster.yaml")

  # Environment variable names are exactly those pixelpipe/settings.py reads.
  app_env = merge(
    {
      AWS_REGION          = var.region
      RAW_BUCKET          = module.storage.bucket_names["raw"]
      AUGMENTED_BUCKET    = module.storage.bucket_names["augmented"]
      NORMALIZED_BUCKET   = module.storage.bucket_names["normalized"]
      ARTIFACTS_BUCKET    = module.storage.bucket_names["artifacts"]
      RAW_PREFIX          = var.raw_prefix
      INGEST_MODE         = var.enable_sqs_ingest ? "sqs" : "poll"
      MLFLOW_TRACKING_URI = var.mlflow_tracking_uri
    },
    { for name, value in { SQS_QUEUE_URL = local.queue_url } : name => value if var.enable_sqs_ingest },
  )
}

module "storage" {
  source = "../modules/storage"

  buckets             = local.bucket_names
  block_public_access = true
  enforce_tls         = true
  sse_algorithm       = var.sse_algorithm
  kms_key_arn         = var.kms_key_arn
  versioning          = true
  lifecycle_rules     = true
  force_destroy       = var.force_destroy
}

module "registry" {
  source = "../modules/registry"

  name_prefix   = var.name_prefix
  force_delete  = var.force_destroy
  protected_tag = var.image_tag
}

module "queues" {
  source = "../modules/queues"
  count  = var.enable_sqs_ingest ? 1 : 0

  name              = "${var.name_prefix}-raw-ingest"
  source_bucket_id  = module.storage.bucket_names["raw"]
  source_bucket_arn = module.storage.bucket_arns["raw"]
  source_account_id = one(data.aws_caller_identity.current[*].account_id)
  filter_prefix     = "${var.raw_prefix}/"
}

module "iam" {
  source = "../modules/iam"

  name_prefix         = var.name_prefix
  bucket_arns         = module.storage.bucket_arns
  queue_arns          = module.queues[*].queue_arn
  dlq_arns            = module.queues[*].dlq_arn
  kms_key_arn         = var.kms_key_arn
  repository_arns     = values(module.registry.repository_arns)
  log_group_arn       = module.compute.log_group_arn
  secret_arns         = [var.dagster_postgres_password_secret_arn]
  secret_kms_key_arns = compact([var.dagster_postgres_password_kms_key_arn])
  cluster_arn         = module.compute.cluster_arn

  run_task_definition_arns = [module.compute.task_definition_arns["run"]]
  scheduled_task_definition_arns = [
    module.compute.task_definition_arns["training"],
    module.compute.task_definition_arns["performance"],
  ]
  schedule_group_arn = module.scheduling.schedule_group_arn
}

module "compute" {
  source = "../modules/compute"

  name_prefix           = var.name_prefix
  image_urls            = module.registry.repository_urls
  image_tag             = var.image_tag
  app_env               = local.app_env
  subnet_ids            = var.subnet_ids
  security_group_ids    = var.security_group_ids
  execution_role_arn    = module.iam.execution_role_arn
  task_role_arn         = module.iam.task_role_arn
  orchestrator_role_arn = module.iam.orchestrator_role_arn
  instance_profile_name = module.iam.instance_profile_name
  dagster_instance_yaml = local.dagster_instance_yaml
  gpu_instance_type     = var.gpu_instance_type
  gpu_ami_id            = local.gpu_ami_id
  gpu_max_instances     = var.gpu_max_instances
  log_retention_days    = var.log_retention_days

  dagster_postgres = {
    host                = var.dagster_postgres_host
    port                = var.dagster_postgres_port
    database            = var.dagster_postgres_database
    username            = var.dagster_postgres_username
    password_secret_arn = var.dagster_postgres_password_secret_arn
  }
}

module "scheduling" {
  source = "../modules/scheduling"

  name_prefix                     = var.name_prefix
  cluster_arn                     = module.compute.cluster_arn
  role_arn                        = module.iam.scheduler_role_arn
  capacity_provider               = module.compute.gpu_capacity_provider
  subnet_ids                      = var.subnet_ids
  security_group_ids              = var.security_group_ids
  retraining_task_definition_arn  = module.compute.task_definition_arns["training"]
  performance_task_definition_arn = module.compute.task_definition_arns["performance"]
  retraining_schedule             = var.retraining_schedule
  performance_schedule            = var.performance_schedule
  timezone                        = var.schedule_timezone
  # no scheduled task can start before its image is pushed
  enabled = var.image_tag != null
}
