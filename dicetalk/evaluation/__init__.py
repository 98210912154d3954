"""Evaluation helpers that need no Lightning (embedding quality; the talker evaluation lives elsewhere)."""
