"""Pure image cores: decode, augment, resize backends; no Dagster here."""
