"""Metrics and evaluation protocols (reenactment tables, temporal consistency)."""
