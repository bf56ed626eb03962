"""Automation: schedules and sensors that decide when assets materialize."""
