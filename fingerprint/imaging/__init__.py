"""Pixel arithmetic shared by the detector and the benchmark builder: pixel-L2 neighbours,
SSIM (`similarity`) and free-form registration (`register`).

May import: `fingerprint.core`.
"""
