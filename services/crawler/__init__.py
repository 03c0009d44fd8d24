"""Polite, host-partitioned crawler of a simulated web (see engine.py for the flow)."""
