"""Training: launcher validation, loaders, model, MLflow logging."""
