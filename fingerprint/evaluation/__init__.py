"""Metrics, score files, run files and the `evaluate` stage.

May import: `fingerprint.core`.
"""
