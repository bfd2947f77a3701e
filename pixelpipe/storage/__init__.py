"""Storage core: safe key->path mapping, the polling-sensor cursor, concurrent S3 transfers."""
