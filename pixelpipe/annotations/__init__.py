"""Label Studio <-> COCO conversion and box maths; no Dagster here."""
