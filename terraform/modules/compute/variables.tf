variable "name_prefix" {
  type        = string
  description = "Name of the cluster and prefix of every task definition family."
}

variable "image_urls" {
  type        = map(string)
  description = "ECR repository URL per image: pipeline (Dagster code, webserver, daemon, run workers) and training (GPU)."
}

variable "image_tag" {
  type        = string
  description = "Immutable image tag to deploy, e.g. the git commit; null (before the first push) keeps the services at zero tasks."
  default     = null
}

variable "dagster_instance_yaml" {
  type        = string
  description = "Dagster instance config (deploy/dagster.yaml) every container writes to DAGSTER_HOME/dagster.yaml at start."
}

variable "app_env" {
  type        = map(string)
  description = "pixelpipe settings (environment variable name -> value) given to every container."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets for tasks and GPU instances (they need a route to S3, ECR and CloudWatch)."
}

variable "security_group_ids" {
  type        = list(string)
  description = "Security groups of tasks and GPU instances (Postgres and MLflow must be reachable)."
}

variable "execution_role_arn" {
  type        = string
  description = "Task execution role (image pull, logs, secrets)."
}

variable "task_role_arn" {
  type        = string
  description = "Role of run workers, training and performance tasks."
}

variable "orchestrator_role_arn" {
  type        = string
  description = "Role of the Dagster webserver and daemon."
}

variable "instance_profile_name" {
  type        = string
  description = "Instance profile of the GPU container instances."
}

variable "dagster_postgres" {
  type = object({
    host                = string
    port                = number
    database            = string
    username            = string
    password_secret_arn = string
  })
  description = "Postgres that holds Dagster's run, event and schedule storage; the password comes from Secrets Manager."
}

variable "webserver" {
  type        = object({ cpu = number, memory = number })
  description = "Fargate size of the Dagster webserver task."
  default     = { cpu = 1024, memory = 2048 }
}

variable "daemon" {
  type        = object({ cpu = number, memory = number })
  description = "Fargate size of the Dagster daemon task (sensors, run queue)."
  default     = { cpu = 512, memory = 1024 }
}

variable "run_worker" {
  type        = object({ cpu = number, memory = number, ephemeral_storage_gib = number })
  description = "Fargate size of one run worker; ephemeral storage is the NVMe staging area of a batch."
  default     = { cpu = 4096, memory = 16384, ephemeral_storage_gib = 100 }
}

variable "gpu_instance_type" {
  type        = string
  description = "EC2 instance type of the GPU capacity (training, DALI benchmarks)."
  default     = "g5.xlarge"
}

variable "gpu_ami_id" {
  type        = string
  description = "AMI of the GPU instances; null reads the ECS GPU-optimized AMI from gpu_ami_ssm_parameter."
  default     = null
}

variable "gpu_ami_ssm_parameter" {
  type        = string
  description = "Public SSM parameter holding the recommended ECS GPU-optimized AMI (Amazon Linux 2023)."
  default     = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
}

variable "gpu_max_instances" {
  type        = number
  description = "Most GPU instances the capacity provider scales out to (it scales in to zero when idle)."
  default     = 2
}

variable "gpu_root_volume_gib" {
  type        = number
  description = "Root volume of a GPU instance (images, datasets staged for training)."
  default     = 200
}

variable "gpu_task" {
  type        = object({ cpu = number, memory = number, gpus = number, shared_memory_mib = number })
  description = "Size of the training and performance tasks; it must fit on one gpu_instance_type."
  default     = { cpu = 3072, memory = 12288, gpus = 1, shared_memory_mib = 4096 }
}

variable "training_command" {
  type        = list(string)
  description = "Command of the nightly retraining task; it records the run in the Dagster instance."
  default     = ["dagster", "job", "execute", "-m", "pixelpipe.definitions", "-j", "training_job"]
}

variable "performance_command" {
  type        = list(string)
  description = "Command of the weekly performance suite; results go to the artifacts bucket and MLflow."
  default     = ["sh", "-c", "pixelpipe bench stage2 --backend dali-gpu && pixelpipe bench training"]
}

variable "log_retention_days" {
  type        = number
  description = "Days container logs are kept in CloudWatch."
  default     = 30
}
