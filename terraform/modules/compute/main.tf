# The ECS cluster: Dagster webserver and daemon as services, run workers launched per run by
# Dagster's EcsRunLauncher on Fargate, and GPU capacity for training and the performance suite.

data "aws_region" "current" {}

data "aws_ssm_parameter" "gpu_ami" {
  count = var.gpu_ami_id == null ? 1 : 0

  name = var.gpu_ami_ssm_parameter
}

locals {
  cluster_name = var.name_prefix
  dagster_home = "/opt/dagster/home"
  gpu_ami_id   = coalesce(var.gpu_ami_id, one(data.aws_ssm_parameter.gpu_ami[*].insecure_value))

  # Until an image tag is given nothing may start: the repositories are still empty.
  deployed  = var.image_tag != null
  image_tag = coalesce(var.image_tag, "not-deployed")

  environment = [
    for name, value in merge(var.app_env, {
      DAGSTER_HOME          = local.dagster_home
      DAGSTER_INSTANCE_YAML = var.dagster_instance_yaml
      DAGSTER_PG_HOST       = var.dagster_postgres.host
      DAGSTER_PG_PORT       = var.dagster_postgres.port
      DAGSTER_PG_DB         = var.dagster_postgres.database
      DAGSTER_PG_USERNAME   = var.dagster_postgres.username
      # EcsRunLauncher starts the latest revision of this family for every run
      DAGSTER_RUN_TASK_DEFINITION = "${var.name_prefix}-run"
    }) : { name = name, value = tostring(value) }
  ]

  secrets = [{ name = "DAGSTER_PG_PASSWORD", valueFrom = var.dagster_postgres.password_secret_arn }]

  # Writes the instance config before the real command, so one image serves every environment;
  # an entry point survives the command override EcsRunLauncher applies to run workers.
  entry_point = [
    "/bin/sh", "-c",
    "mkdir -p \"$DAGSTER_HOME\" && printf '%s' \"$DAGSTER_INSTANCE_YAML\" > \"$DAGSTER_HOME/dagster.yaml\" && exec \"$@\"",
    "pixelpipe-entrypoint",
  ]

  fargate_tasks = {
    webserver = {
      role    = var.orchestrator_role_arn
      size    = merge(var.webserver, { ephemeral_storage_gib = 21 })
      command = ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"]
      ports   = [3000]
    }
    daemon = {
      role    = var.orchestrator_role_arn
      size    = merge(var.daemon, { ephemeral_storage_gib = 21 })
      command = ["dagster-daemon", "run", "-w", "workspace.yaml"]
      ports   = []
    }
    # No command: EcsRunLauncher supplies `dagster api execute_run ...` for each run.
    run = {
      role    = var.task_role_arn
      size    = var.run_worker
      command = null
      ports   = []
    }
  }

  gpu_tasks = {
    training    = var.training_command
    performance = var.performance_command
  }
}

resource "aws_cloudwatch_log_group" "this" {
  name              = "/ecs/${var.name_prefix}"
  retention_in_days = var.log_retention_days
}

resource "aws_ecs_cluster" "this" {
  name = local.cluster_name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# --- GPU capacity: an auto scaling group ECS scales between zero and gpu_max_instances -------

resource "aws_launch_template" "gpu" {
  name_prefix   = "${var.name_prefix}-gpu-"
  image_id      = local.gpu_ami_id
  instance_type = var.gpu_instance_type

  vpc_security_group_ids = var.security_group_ids

  iam_instance_profile {
    name = var.instance_profile_name
  }

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.gpu_root_volume_gib
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  user_data = base64encode(join("\n", [
    "#!/bin/bash",
    "echo ECS_CLUSTER=${local.cluster_name} >> /etc/ecs/ecs.config",
    "echo ECS_ENABLE_GPU_SUPPORT=true >> /etc/ecs/ecs.config",
  ]))
}

resource "aws_autoscaling_group" "gpu" {
  name_prefix         = "${var.name_prefix}-gpu-"
  min_size            = 0
  max_size            = var.gpu_max_instances
  vpc_zone_identifier = var.subnet_ids

  launch_template {
    id      = aws_launch_template.gpu.id
    version = aws_launch_template.gpu.latest_version
  }

  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  tag {
    key                 = "Name"
    value               = "${var.name_prefix}-gpu"
    propagate_at_launch = true
  }

  # ECS managed scaling owns the desired capacity.
  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  name = "${var.name_prefix}-gpu"

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.gpu.arn
    managed_termination_protection = "DISABLED"
    managed_draining               = "ENABLED"

    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = 100
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = var.gpu_max_instances
    }
  }
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE", aws_ecs_capacity_provider.gpu.name]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

# --- task definitions ---------------------------------------------------------------------

resource "aws_ecs_task_definition" "fargate" {
  for_each = local.fargate_tasks

  family                   = "${var.name_prefix}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(each.value.size.cpu)
  memory                   = tostring(each.value.size.memory)
  execution_role_arn       = var.execution_role_arn
  task_role_arn            = each.value.role

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  ephemeral_storage {
    size_in_gib = each.value.size.ephemeral_storage_gib
  }

  container_definitions = jsonencode([{
    name         = each.key
    image        = "${var.image_urls["pipeline"]}:${local.image_tag}"
    essential    = true
    entryPoint   = local.entry_point
    command      = each.value.command
    environment  = local.environment
    secrets      = local.secrets
    portMappings = [for port in each.value.ports : { containerPort = port, protocol = "tcp" }]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = each.key
      }
    }
  }])
}

resource "aws_ecs_task_definition" "gpu" {
  for_each = local.gpu_tasks

  family                   = "${var.name_prefix}-${each.key}"
  requires_compatibilities = ["EC2"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.gpu_task.cpu)
  memory                   = tostring(var.gpu_task.memory)
  execution_role_arn       = var.execution_role_arn
  task_role_arn            = var.task_role_arn

  container_definitions = jsonencode([{
    name        = each.key
    image       = "${var.image_urls["training"]}:${local.image_tag}"
    essential   = true
    entryPoint  = local.entry_point
    command     = each.value
    environment = local.environment
    secrets     = local.secrets
    resourceRequirements = [
      { type = "GPU", value = tostring(var.gpu_task.gpus) },
    ]
    # torch DataLoader workers and NCCL exchange tensors through /dev/shm.
    linuxParameters = { sharedMemorySize = var.gpu_task.shared_memory_mib }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = each.key
      }
    }
  }])
}

# --- long-running Dagster services ----------------------------------------------------------

resource "aws_ecs_service" "dagster" {
  for_each = toset(["webserver", "daemon"])

  name            = "${var.name_prefix}-${each.key}"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.fargate[each.key].arn
  # Zero tasks until the images are pushed and image_tag names them: a first deployment that
  # cannot pull its image would trip the circuit breaker and roll back to nothing.
  desired_count = local.deployed ? 1 : 0
  launch_type   = "FARGATE"

  # Two daemons must never run at once: stop the old one before the new one starts.
  deployment_minimum_healthy_percent = each.key == "daemon" ? 0 : 100
  deployment_maximum_percent         = each.key == "daemon" ? 100 : 200

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
}
