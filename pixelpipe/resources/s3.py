"""S3 resource: a typed boto3 client factory with retries and transfer concurrency."""

from __future__ import annotations

import functools
from typing import Any

import dagster as dg

from pixelpipe.settings import Settings
from pixelpipe.storage.client import client_from_settings, make_client

__all__ = ["S3Resource", "client_from_settings", "make_client"]


class S3Resource(dg.ConfigurableResource):
    """S3 (or any S3-compatible server): endpoint, credentials, region, retries, concurrency."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str = "us-east-1"
    max_attempts: int = 5
    max_concurrency: int = 32

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Resource:
        return cls(
            endpoint_url=settings.s3_endpoint_url,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key,
            region=settings.aws_region,
            max_attempts=settings.s3_max_attempts,
            max_concurrency=settings.s3_max_concurrency,
        )

    def client(self) -> Any:
        return _cached_client(
            self.endpoint_url,
            self.access_key_id,
            self.secret_access_key,
            self.region,
            self.max_attempts,
            max(64, self.max_concurrency * 2),
        )


@functools.lru_cache(maxsize=8)
def _cached_client(
    endpoint: str | None, key: str | None, secret: str | None, region: str, attempts: int, pool: int
) -> Any:
    return make_client(
        endpoint, key, secret, region, max_attempts=attempts, max_pool_connections=pool
    )
