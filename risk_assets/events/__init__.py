"""Versioned schemas of the exchange's raw events and fraud labels, and their validation."""
