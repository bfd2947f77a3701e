# Copy to terraform.tfvars. Credentials are not set here: export TF_VAR_access_key and
# TF_VAR_secret_key (for the devstack: eval $(pixelpipe devstack env) and reuse its keys).
s3_endpoint   = "http://127.0.0.1:9000"
bucket_prefix = "pixelpipe"
