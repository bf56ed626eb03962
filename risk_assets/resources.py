"""Dagster resources: thin, configurable handles on the lake and the broker.

Every value comes from run configuration or ``dg.EnvVar`` (see ``definitions.py``); nothing reads the
environment at import time. The objects they hand out (``Lake``, ``KafkaRangeReader``) are plain
Python and work the same from a notebook.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from risk_assets.ingest.kafka_reader import KafkaRangeReader
from risk_assets.lake import Lake


class LakeResource(dg.ConfigurableResource):
    """The data lake: a local directory (relative paths resolve against the working directory) or
    ``s3://bucket/prefix`` through dagster-aws. S3 credentials follow the standard AWS chain."""

    url: str
    s3_endpoint_url: str = ""
    aws_region: str = "us-east-1"

    def lake(self) -> Lake:
        """A ``Lake`` for this configuration."""
        if not self.url.startswith("s3://"):
            return Lake(str(Path(self.url).expanduser().resolve()))
        options = {"aws_region": self.aws_region}
        if self.s3_endpoint_url:
            options["aws_endpoint_url"] = self.s3_endpoint_url
            options["aws_allow_http"] = str(self.s3_endpoint_url.startswith("http://")).lower()
        s3 = S3Resource(endpoint_url=self.s3_endpoint_url or None, region_name=self.aws_region)
        return Lake(self.url, storage_options=options, s3_client=s3.get_client())


class KafkaResource(dg.ConfigurableResource):
    """A Kafka-protocol cluster, read by exact offset ranges (never by consumer-group commits)."""

    bootstrap_servers: str
    timeout_s: float = 30.0

    def range_reader(self) -> KafkaRangeReader:
        """A new offset-range reader; close it (or use it as a context manager) when done."""
        return KafkaRangeReader(self.bootstrap_servers, timeout_s=self.timeout_s)
