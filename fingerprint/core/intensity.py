"""Intensity depth of medical images: the significant bit depth of values stored in a 16-bit container.

CT slices are commonly 12-bit values (0-4095) in 16-bit PNG or TIFF files;
`significant_depth` finds the smallest of `DEPTHS` whose range holds an
image's maximum, the depth by which `fingerprint pack` scales it by default
and by which the benchmark builder measures its sets.
"""

from __future__ import annotations

#: the bit depths a wider-than-8-bit image is scaled by under the `depth` rule (the smallest that holds its values)
DEPTHS = (10, 12, 14, 16)


def significant_depth(maximum: float) -> int:
    """The smallest of DEPTHS whose range holds `maximum` (16 when none does)."""
    return next((d for d in DEPTHS if maximum <= (1 << d) - 1), 16)
