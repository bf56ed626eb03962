"""risk-stack: start, stop and inspect the local real services (Redis, Kafka-protocol broker, S3,
PostgreSQL for the Dagster instance).

See :mod:`risk_assets.stack.launcher` for the design and ``docs/stack.md`` for usage.
"""

from risk_assets.stack.launcher import (
    DEFAULT_TOPICS,
    SERVICES,
    ServiceState,
    StackConfig,
    StackError,
    default_stack_dir,
    down,
    endpoints,
    pids,
    service_states,
    status,
    up,
)

__all__ = [
    "DEFAULT_TOPICS",
    "SERVICES",
    "ServiceState",
    "StackConfig",
    "StackError",
    "default_stack_dir",
    "down",
    "endpoints",
    "pids",
    "service_states",
    "status",
    "up",
]
