"""Analyses over exported features: scikit-learn comparators (`compare`) and hierarchical clustering (`cluster`).

May import: the packages below it (`core` ... `membership`).
"""
