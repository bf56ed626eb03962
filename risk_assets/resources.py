"""Dagster resources: thin, configurable handles on the lake, the broker, Redis, the raw-event
source and the scoring service.

Every value comes from run configuration or ``dg.EnvVar`` (see ``definitions.py``); nothing reads the
environment at import time. The objects they hand out (``Lake``, ``KafkaRangeReader``, frames) come
from plain Python modules and work the same from a notebook.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl

from risk_assets.ingest import raw_reader, snowflake_mirror
from risk_assets.ingest.kafka_reader import KafkaRangeReader
from risk_assets.lake import Lake

if TYPE_CHECKING:  # imported where used: together they add seconds to every code-location load
    from dagster_snowflake import SnowflakeResource


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
        from dagster_aws.s3 import S3Resource

        s3 = S3Resource(endpoint_url=self.s3_endpoint_url or None, region_name=self.aws_region)
        return Lake(self.url, storage_options=options, s3_client=s3.get_client())


class KafkaResource(dg.ConfigurableResource):
    """A Kafka-protocol cluster, read by exact offset ranges (never by consumer-group commits)."""

    bootstrap_servers: str
    timeout_s: float = 30.0

    def range_reader(self) -> KafkaRangeReader:
        """A new offset-range reader; close it (or use it as a context manager) when done."""
        return KafkaRangeReader(self.bootstrap_servers, timeout_s=self.timeout_s)

    def producer(self) -> Any:
        """A confluent-kafka producer that waits for full acknowledgement of every message."""
        from confluent_kafka import Producer

        return Producer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "acks": "all",
                "linger.ms": 5,
                "client.id": "risk-assets",
            }
        )


class RawEventSource(dg.ConfigurableResource):
    """Where batch features read raw events and labels: the lake archive (default) or the archive's
    mirror in Snowflake (``backend="snowflake"``), through dagster-snowflake — and where they are
    computed: Polars in the run (``compute_backend="polars"``, default) or SQL in the warehouse
    (``compute_backend="snowflake"``: ``features/snowflake_sql.py`` over the mirror tables, results
    kept in the Snowflake offline-store tables and copied into the lake's offline store).

    Snowflake settings are only used with those backends; the password comes from ``dg.EnvVar``.
    ``snowflake_connection_args`` passes extra connector arguments (host/port/protocol of a test
    endpoint, for example)."""

    backend: str = "lake"
    compute_backend: str = "polars"
    snowflake_account: str = ""
    snowflake_user: str = ""
    snowflake_password: str = ""
    snowflake_database: str = "RISK"
    snowflake_schema: str = "RAW"
    snowflake_warehouse: str = ""
    snowflake_table: str = "RAW_EVENTS"
    snowflake_labels_table: str = "RAW_LABELS"
    snowflake_offline_prefix: str = "FEATURES"
    snowflake_connection_args: dict[str, Any] | None = None

    def snowflake(self) -> SnowflakeResource:
        """The dagster-snowflake resource for the configured account."""
        if not (self.snowflake_account and self.snowflake_user):
            raise dg.Failure("Snowflake is not configured: set SNOWFLAKE_ACCOUNT and SNOWFLAKE_USER")
        from dagster_snowflake import SnowflakeResource

        return SnowflakeResource(
            account=self.snowflake_account,
            user=self.snowflake_user,
            password=self.snowflake_password or None,
            database=self.snowflake_database,
            schema=self.snowflake_schema,
            warehouse=self.snowflake_warehouse or None,
            additional_snowflake_connection_args=self.snowflake_connection_args,
        )

    def computes_in_snowflake(self) -> bool:
        """True when feature groups are computed by the warehouse (``compute_backend``)."""
        if self.compute_backend not in ("polars", "snowflake"):
            raise dg.Failure(
                f"unknown feature compute backend {self.compute_backend!r} (expected 'polars' or 'snowflake')"
            )
        return self.compute_backend == "snowflake"

    def events(
        self, lake: Lake, start: datetime, end: datetime, columns: Sequence[str] | None = None
    ) -> pl.DataFrame:
        """Every valid event with ``event_ts`` in ``[start, end)``, archive layout (``columns`` only)."""
        if self.backend == "snowflake":
            with self.snowflake().get_connection() as conn:
                return snowflake_mirror.read_events(conn.cursor(), self.snowflake_table, start, end, columns)
        if self.backend != "lake":
            raise dg.Failure(f"unknown raw event backend {self.backend!r} (expected 'lake' or 'snowflake')")
        return raw_reader.read_events(lake, start, end, columns)

    def scan_events(
        self,
        lake: Lake,
        start: datetime,
        end: datetime,
        columns: Sequence[str] | None = None,
        predicate: pl.Expr | None = None,
    ) -> pl.LazyFrame:
        """Lazily, the events of ``[start, end)`` matching ``predicate`` (``columns`` only). On the
        lake the predicate is pushed into the Parquet scan, so a shard reads only its rows; the
        Snowflake mirror is read whole and filtered in Polars (no memory bound there)."""
        if self.backend == "lake":
            return raw_reader.scan_events(lake, start, end, columns, predicate)
        frame = self.events(lake, start, end, columns).lazy()
        return frame if predicate is None else frame.filter(predicate)

    def labels(self, lake: Lake, start: datetime, end: datetime) -> pl.DataFrame:
        """Fraud labels with ``label_ts`` in ``[start, end)`` (always from the lake archive)."""
        return raw_reader.read_labels(lake, start, end)


class RedisResource(dg.ConfigurableResource):
    """The Redis that holds the online store and the stream state: a URL. ``redis+cluster://h:p[,h:p…]``
    (``REDIS_URL``) selects Redis Cluster (``features/redis_client.py``); ``cluster=True`` forces it
    for a plain ``redis://`` seed URL."""

    url: str
    namespace: str = "risk"
    cluster: bool = False


class ScoringServiceResource(dg.ConfigurableResource):
    """Where the scoring service (risk-serve) runs; empty: not checked."""

    url: str = ""
