"""How ranged backfills are cut into runs, and the concurrency pools of the heavy assets.

Wiring constants shared by the asset modules and the deployment (``dagster.yaml``, ``deploy/``):

* **Backfill policies.** A ranged backfill of a partitioned asset becomes runs of at most N
  partitions each (``BackfillPolicy.multi_run``): a year of hours is 365 runs of one day, not one run
  holding a year of events, and not 8,760 one-hour runs (each run costs seconds to launch, and the
  daemon enqueues about one per second). Each run still writes every partition of its range
  idempotently (delete-then-write per partition), so a failed run is retried alone.
* **Pools.** Each heavy asset names the pool of the resource it contends for. ``dagster.yaml`` sets
  ``concurrency.pools.granularity: run``, so a queued run whose pool is full is not launched at all
  (no pod or process sits waiting for a slot), and ``default_limit`` gives every pool one slot unless
  set otherwise (``dagster instance concurrency set <pool> <n>``; docs/deploy.md gives production
  values).
"""

from __future__ import annotations

import dagster as dg

HOURS_PER_RUN = 24
"""Hourly assets (the Kafka archive, the Snowflake mirror): at most one day of hours per run."""

DAYS_PER_RUN = 7
"""Daily batch features: at most a week of days per run (plus the groups' lookback)."""

HOURLY_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=HOURS_PER_RUN)
DAILY_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=DAYS_PER_RUN)

POOL_KAFKA_ARCHIVE = "kafka_archive"
"""Archive runs: read a time window of a Kafka topic, write the lake."""

POOL_LAKE_BATCH = "lake_batch"
"""Batch feature runs: Polars over the archive, the memory-heavy part of the platform."""

POOL_WAREHOUSE = "snowflake_warehouse"
"""Snowflake mirror runs: delete-then-insert into one warehouse table."""

POOLS: tuple[str, ...] = (POOL_KAFKA_ARCHIVE, POOL_LAKE_BATCH, POOL_WAREHOUSE)
