"""Image inputs: finding sources, URLs, packing image folders into WebDataset shards, reading shards, streaming.

May import: `fingerprint.core`.
"""
