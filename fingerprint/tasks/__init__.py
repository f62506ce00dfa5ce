"""End-to-end tasks: the `run` pipeline, its configs and plan, the demo, image-set preparation,
and `audit` and `attribute` with their statistics.

May import: every package below it and `fingerprint.benchdata`; only `fingerprint.api` and the
command line import it.
"""
