-- Runs once, when the Postgres volume is created: MLflow's database next to Dagster's
-- (POSTGRES_DB). The same role owns both.
CREATE DATABASE mlflow;
