"""fingerprint: find the training-data fingerprints that generative models leave in synthetic medical images."""

__version__ = "0.1.0"
