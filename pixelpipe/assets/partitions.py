"""The batch partitions: one dynamic partition per batch of new raw images."""

import dagster as dg

raw_batches_partitions = dg.DynamicPartitionsDefinition(name="raw_image_batches")
