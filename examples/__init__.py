"""Worked examples of onboarding a team's own events onto risk_assets (see ``docs/sources.md``)."""
