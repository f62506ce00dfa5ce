"""The network, its model files, embedding export, inference helpers, feature files and the FAISS index.

May import: `fingerprint.core`, `fingerprint.data`, `fingerprint.evaluation`, `fingerprint.imaging`.
"""
