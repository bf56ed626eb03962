"""Kafka → lake: exact offset-range reads, validation, dead letters and the raw archives."""
