"""risk-sim: a deterministic simulator of a crypto exchange's traffic with fraud and labels.

Pure API (no Kafka, no lake): :func:`generate` / :func:`iter_chunks` / :func:`generate_chunk`
return :class:`SimulatedData` frames; :func:`encode_events` / :func:`encode_labels` make the JSON
payloads. Writers for the lake and Kafka live in :mod:`risk_assets.simulator.writers`.
"""

from risk_assets.simulator.config import SimConfig
from risk_assets.simulator.drift import DriftScenario, drift_manifest, drift_population
from risk_assets.simulator.encoding import BAD_KINDS, encode_events, encode_labels, event_batch
from risk_assets.simulator.generator import SimulatedData, generate, generate_chunk, iter_chunks
from risk_assets.simulator.population import Population, build_population

__all__ = [
    "BAD_KINDS",
    "DriftScenario",
    "Population",
    "SimConfig",
    "SimulatedData",
    "build_population",
    "drift_manifest",
    "drift_population",
    "encode_events",
    "encode_labels",
    "event_batch",
    "generate",
    "generate_chunk",
    "iter_chunks",
]
