# Copy to terraform.tfvars and replace every value: the subnets, security group, hosts and
# secret below are placeholders. No secrets here: the Postgres password lives in Secrets Manager
# and AWS credentials come from your AWS profile or SSO session.
region                               = "us-east-1"
bucket_prefix                        = "acme-pixelpipe"
subnet_ids                           = ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"]
security_group_ids                   = ["sg-0123456789abcdef0"]
mlflow_tracking_uri                  = "https://mlflow.internal.example.com"
dagster_postgres_host                = "dagster.cluster-abc.us-east-1.rds.amazonaws.com"
dagster_postgres_password_secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:pixelpipe/dagster-pg-AbCdEf"
enable_sqs_ingest                    = true
# Leave unset for the first apply (services at zero tasks, schedules disabled); once the images
# are pushed, set it to their tag and apply again. Tags starting dev- or ci- expire from ECR.
# image_tag = "0123abc"
