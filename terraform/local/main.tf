# pixelpipe's four buckets on any S3-compatible server, through the AWS provider.

provider "aws" {
  region     = var.region
  access_key = var.access_key
  secret_key = var.secret_key

  # Not AWS: no STS, no account id, no instance metadata, any region name.
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  s3_use_path_style           = true

  endpoints {
    s3 = var.s3_endpoint
  }
}

locals {
  bucket_roles = ["raw", "augmented", "normalized", "artifacts"]
  bucket_names = { for role in local.bucket_roles : role => "${var.bucket_prefix}-${role}" }

  # Environment variable names are exactly those pixelpipe/settings.py reads; credentials stay out.
  app_env = {
    S3_ENDPOINT_URL   = var.s3_endpoint
    AWS_REGION        = var.region
    RAW_BUCKET        = module.storage.bucket_names["raw"]
    AUGMENTED_BUCKET  = module.storage.bucket_names["augmented"]
    NORMALIZED_BUCKET = module.storage.bucket_names["normalized"]
    ARTIFACTS_BUCKET  = module.storage.bucket_names["artifacts"]
    RAW_PREFIX        = var.raw_prefix
    INGEST_MODE       = "poll"
  }
}

module "storage" {
  source = "../modules/storage"

  buckets = local.bucket_names
  # Public access blocks and bucket policies are AWS-only APIs; these servers keep buckets private.
  block_public_access = false
  enforce_tls         = false
  sse_algorithm       = var.sse_algorithm
  versioning          = var.versioning
  lifecycle_rules     = var.lifecycle_rules
  # storage classes are an AWS notion; SeaweedFS answers 501 NotImplemented to transitions
  lifecycle_transitions = var.lifecycle_transitions
  force_destroy         = var.force_destroy
}
