"""Membership scorers: the untrained baselines, the calibrated similarity profile and its
spaces, alignment, fusion, the scorer registry and the `score` stage.

May import: the packages below it (`core`, `data`, `evaluation`, `imaging`, `embedding`, `training`).
"""
