"""Procedural CT-like patients: the random anatomy that `phantom` renders into axial chest slices.

The challenge's real images (axial lung CT slices of tuberculosis patients,
256x256 8-bit gray) cannot be redistributed, so the benchmark builder needs a
real-image source of its own. Each patient is a random draw of anatomy, stored
as parameters in a 3D patient frame so that neighbouring slices of one patient
are consistent:

- pose on the table (shift, rotation, scale) and the scanner table itself;
- body contour (super-ellipse with a flattened back and random harmonics),
  subcutaneous fat and chest-wall muscle of varying thickness;
- two lung fields (thoracic cavity minus mediastinum and spine) whose size,
  heart, great vessels, trachea / main bronchi and liver dome depend on the
  slice level (apex to base);
- branching 3D vessel trees (and the bronchi that run with them) in each lung,
  cut by the slice slab, so a slice shows dots and short segments;
- vertebra with canal and posterior elements, paraspinal muscles, ribs that
  slide along the chest wall with the level, sternum and scapulae;
- tuberculosis-like findings in some patients: nodules and tree-in-bud
  clusters, thick-walled cavities, and consolidation patches;
- a blurring point-spread function, spatially correlated scanner noise of
  patient-specific dose, and a patient-specific display window.

Randomness comes from `np.random.default_rng([seed, patient])`, so patient
`i` is the same whatever the number of patients drawn. Findings follow the
radiology of pulmonary tuberculosis (Nachiappan et al. 2017, RadioGraphics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Hounsfield-like values of the tissues drawn.
HU = {
    "air": -1000.0,
    "lung": -860.0,
    "fat": -95.0,
    "soft": 40.0,
    "muscle": 50.0,
    "blood": 42.0,
    "cortex": 750.0,
    "marrow": 230.0,
    "cartilage": 120.0,
    "table": -250.0,
    "table_shell": 150.0,
}

#: Length of one patient-frame unit (the body's half-width is about one unit).
MM_PER_UNIT = 170.0


@dataclass
class PhantomConfig:
    """What the phantom source draws; every field is documented in docs/benchmark-data.md."""

    size: int = 256  # output width = height in pixels
    tb_fraction: float = 0.5  # share of patients with tuberculosis-like findings
    slices_per_patient: int = 1  # > 1: neighbouring slices of one patient
    slice_spacing_mm: float = 5.0  # distance between neighbouring slices
    slice_thickness_mm: float = 2.5  # slab that vessels and findings are cut with
    noise: float = 1.0  # scale of the scanner noise (0 = noise-free)

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"phantom size must be >= 16, got {self.size}")
        if self.slices_per_patient < 1:
            raise ValueError(f"slices_per_patient must be >= 1, got {self.slices_per_patient}")
        if not 0.0 <= self.tb_fraction <= 1.0:
            raise ValueError(f"tb_fraction must be in [0, 1], got {self.tb_fraction}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")


@dataclass
class Patient:
    """The random anatomy of one patient, in the patient frame (u right-left, v front-back, z level)."""

    index: int
    level: float  # slice level of slice 0: 0 = lung apex, 1 = lung base
    pose: tuple[float, float, float, float]  # image-centre x, y, rotation (rad), scale
    body: dict
    organs: dict
    ribs: np.ndarray  # (n, 4): angle at level 0, angle drift per unit z, half-length, half-width
    vessels: np.ndarray  # (m, 8): segment ends (u, v, z) x 2, radius, airway flag
    findings: list = field(default_factory=list)
    window: tuple[float, float] = (-1000.0, 400.0)
    noise_hu: float = 15.0
    psf_px: float = 0.6
    table: dict = field(default_factory=dict)
    fov: float = 1.1

    @property
    def has_tb(self) -> bool:
        return bool(self.findings)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def make_patient(seed: int, index: int, config: PhantomConfig) -> Patient:
    """Draw patient `index` of the population seeded with `seed`."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, index, 0x50A7])
    level = _u(rng, 0.22, 0.82)
    scale = _u(rng, 0.88, 1.04)
    pose = (rng.normal(0.0, 0.035), _u(rng, -0.07, 0.02), math.radians(rng.normal(0.0, 3.0)), scale)

    half_w = _u(rng, 0.86, 1.0)
    aspect = _u(rng, 0.60, 0.76)
    body = {
        "a": half_w,
        "b_front": half_w * aspect,
        "b_back": half_w * aspect * _u(rng, 0.84, 0.97),
        "p": _u(rng, 2.0, 2.9),
        "harm": [(k, rng.normal(0.0, 0.018 / k**0.5), _u(rng, 0.0, 2 * math.pi)) for k in range(2, 7)],
        "skin": _u(rng, 0.006, 0.012),
        "fat": _u(rng, 0.025, 0.13),
        "fat_harm": (_u(rng, 0.2, 0.7), _u(rng, 0.0, 2 * math.pi)),
        "muscle": _u(rng, 0.035, 0.075),
        "pectoral": _u(rng, 0.0, 0.06),
        "fat_hu": rng.normal(HU["fat"], 12.0),
        "muscle_hu": rng.normal(HU["muscle"], 8.0),
        "med_hu": rng.normal(-70.0, 15.0),
        "lung_hu": rng.normal(HU["lung"], 25.0),
        "lung_grad": _u(rng, 20.0, 90.0),  # denser towards the back (gravity)
        "med_width": _u(rng, 0.09, 0.15),
        "lung_gap": _u(rng, 0.012, 0.03),
    }
    organs = {
        "heart": (
            _u(rng, 0.18, 0.26),
            _u(rng, 0.72, 0.9),
            _u(rng, 0.05, 0.14),
            _u(rng, -0.12, 0.0),
            _u(rng, -0.7, -0.3),
        ),
        "aorta_r": _u(rng, 0.05, 0.075),
        "aorta_asc_r": _u(rng, 0.065, 0.09),
        "pa_r": _u(rng, 0.055, 0.08),
        "trachea_r": _u(rng, 0.04, 0.058),
        "spine_r": _u(rng, 0.085, 0.11),
        "spine_v": _u(rng, 0.50, 0.62),
        "canal_r": _u(rng, 0.035, 0.05),
        "liver": (_u(rng, 0.68, 0.82), _u(rng, 0.35, 0.55)),  # level where the dome appears, size
        "esophagus_air": bool(rng.random() < 0.4),
        "scapula": (_u(rng, 0.8, 1.0), _u(rng, 0.06, 0.1)),
    }
    n_ribs = int(rng.integers(5, 9))
    ribs = []
    for side in (-1.0, 1.0):
        base = np.sort(rng.uniform(0.0, 1.0, n_ribs)) * 0.9 + rng.uniform(0, 0.1)
        for t in base:
            # angle measured from the back midline (pi/2) round the side towards the front
            ang = math.pi / 2 + side * (0.45 + t * 1.9)
            ribs.append((ang, side * _u(rng, 1.2, 2.4), _u(rng, 0.02, 0.045), _u(rng, 0.011, 0.017)))
    # findings and vessels draw from their own streams, so a patient's anatomy does not depend on tb_fraction
    has_tb = rng.random() < config.tb_fraction
    findings = _draw_findings(np.random.default_rng([seed & 0xFFFFFFFF, index, 0xF1D]), config) if has_tb else []
    return Patient(
        index=index,
        level=level,
        pose=pose,
        body=body,
        organs=organs,
        ribs=np.asarray(ribs, np.float32),
        vessels=_vessel_tree(np.random.default_rng([seed & 0xFFFFFFFF, index, 0x7EE]), body),
        findings=findings,
        window=(_u(rng, -1024.0, -990.0), _u(rng, 250.0, 480.0)),
        noise_hu=_u(rng, 8.0, 32.0) * config.noise,
        psf_px=_u(rng, 0.4, 0.85),
        table={
            "gap": _u(rng, 0.015, 0.06),
            "thick": _u(rng, 0.025, 0.05),
            "curve": _u(rng, 0.0, 0.12),
            "hu": _u(rng, -400.0, -150.0),
            "half": _u(rng, 0.85, 1.05),
        },
        fov=_u(rng, 0.98, 1.3),
    )


def _draw_findings(rng: np.random.Generator, config: PhantomConfig) -> list[dict]:
    """Tuberculosis-like findings at fixed 3D positions in the lungs (mostly upper and posterior)."""
    # findings sit within the slices drawn, so that most of them are cut
    half = (config.slices_per_patient - 1) / 2 * config.slice_spacing_mm / MM_PER_UNIT + 0.01
    out: list[dict] = []

    def pos() -> tuple[float, float, float]:
        side = 1.0 if rng.random() < 0.5 else -1.0
        return (side * _u(rng, 0.22, 0.62), _u(rng, -0.35, 0.3), _u(rng, -half, half))

    kinds = rng.choice(["nodules", "cavity", "consolidation"], size=int(rng.integers(1, 4)), p=[0.45, 0.25, 0.3])
    for kind in kinds:
        if kind == "nodules":
            cu, cv, cz = pos()
            n = int(rng.integers(1, 9))
            spread = _u(rng, 0.02, 0.12)
            tiny = rng.random() < 0.5  # tree-in-bud: many tiny nodules
            for _ in range(n):
                r = _u(rng, 0.006, 0.013) if tiny else _u(rng, 0.01, 0.035)
                out.append(
                    {
                        "kind": "nodule",
                        "u": cu + rng.normal(0, spread),
                        "v": cv + rng.normal(0, spread),
                        "z": float(np.clip(cz + rng.normal(0, spread / 3), -half, half)),
                        "r": r,
                        "hu": rng.normal(30.0, 15.0),
                    }
                )
        elif kind == "cavity":
            u, v, z = pos()
            r = _u(rng, 0.03, 0.08)
            out.append(
                {
                    "kind": "cavity",
                    "u": u,
                    "v": v,
                    "z": z,
                    "r": r,
                    "wall": r * _u(rng, 0.18, 0.45),
                    "harm": [(k, rng.normal(0.0, 0.08), _u(rng, 0, 2 * math.pi)) for k in (2, 3, 5)],
                    "hu": rng.normal(35.0, 12.0),
                }
            )
        else:
            u, v, z = pos()
            out.append(
                {
                    "kind": "consolidation",
                    "u": u,
                    "v": v,
                    "z": z,
                    "a": _u(rng, 0.06, 0.17),
                    "b": _u(rng, 0.05, 0.14),
                    "rz": _u(rng, 0.04, 0.12),
                    "angle": _u(rng, 0, math.pi),
                    "hu": _u(rng, -350.0, 20.0),
                    "texture": rng.standard_normal((12, 12)).astype(np.float32),
                }
            )
    return out


def _vessel_tree(rng: np.random.Generator, body: dict) -> np.ndarray:
    """Segments of branching 3D vessel trees (and the bronchi beside them) for both lungs.

    Trees grow from the hila by binary branching; each generation is computed
    for all branches of both lungs at once. Returns rows
    (u0, v0, z0, u1, v1, z1, radius, is_airway).
    """
    n_roots = rng.integers(6, 9, size=2)
    side = np.repeat(np.array([-1.0, 1.0]), n_roots)
    nr = len(side)
    start = np.stack(
        [
            side * 0.2,
            rng.uniform(-0.12, 0.1, nr),
            np.concatenate([np.linspace(-0.3, 0.3, k) for k in n_roots]) + rng.normal(0, 0.04, nr),
        ],
        1,
    )
    d = np.stack([side, rng.normal(0, 0.6, nr), rng.normal(0, 0.6, nr)], 1)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    length = rng.uniform(0.13, 0.2, nr)
    radius = rng.uniform(0.022, 0.032, nr)
    rows = []
    for gen in range(10):
        nb = len(start)
        end = start + d * length[:, None]
        rows.append(np.column_stack([start, end, radius, np.zeros(nb)]))
        if gen < 4:  # the bronchus beside the artery
            off = np.stack([d[:, 1], -d[:, 0], np.zeros(nb)], 1)  # d x (0, 0, 1)
            off *= (radius * 2.2 / np.maximum(np.linalg.norm(off, axis=1), 1e-6))[:, None]
            rows.append(np.column_stack([start + off, end + off, radius * 0.9, np.ones(nb)]))
        # two children, rotated by +-angle about a random axis perpendicular to the parent
        rnd = rng.standard_normal((nb, 3))
        perp = rnd - (rnd * d).sum(1, keepdims=True) * d
        perp /= np.maximum(np.linalg.norm(perp, axis=1, keepdims=True), 1e-9)
        ang = rng.uniform(0.35, 0.75, (nb, 2))
        d = np.concatenate(
            [np.cos(ang[:, :1]) * d + np.sin(ang[:, :1]) * perp, np.cos(ang[:, 1:]) * d - np.sin(ang[:, 1:]) * perp]
        )
        side = np.concatenate([side, side])
        # keep trees growing outwards from the mediastinum
        d[:, 0] = np.where(d[:, 0] * side < -0.2, -d[:, 0], d[:, 0])
        start = np.concatenate([end, end])
        length = np.concatenate([length, length]) * rng.uniform(0.76, 0.92, 2 * nb)
        radius = np.concatenate([radius, radius]) * rng.uniform(0.68, 0.8, 2 * nb)
    seg = np.concatenate(rows).astype(np.float32)
    # trees are grown in a unit chest; stretch them to this patient's
    seg[:, [0, 3]] *= body["a"] * 0.95
    seg[:, [1, 4]] *= body["b_front"] * 1.1
    return seg


def slab_points(seg: np.ndarray, dz: float, half: float, step: float) -> np.ndarray:
    """Points (u, v, radius, is_airway, spacing) every `step` along the parts of segments within the slab.

    `spacing` is the in-plane distance between a segment's points, inf for a
    segment cut across (one point: a round cross-section).
    """
    z0, z1 = seg[:, 2] - dz, seg[:, 5] - dz
    w = seg[:, 6] + half
    cut = (np.minimum(z0, z1) < w) & (np.maximum(z0, z1) > -w)
    seg, z0, z1, w = seg[cut], z0[cut], z1[cut], w[cut]
    if not len(seg):
        return np.zeros((0, 5), np.float32)
    dzs = z1 - z0
    flat = np.abs(dzs) < 1e-6
    safe = np.where(flat, 1.0, dzs)
    ta = np.where(flat, 0.0, (-w - z0) / safe)
    tb = np.where(flat, 1.0, (w - z0) / safe)
    t0 = np.clip(np.minimum(ta, tb), 0.0, 1.0)
    t1 = np.clip(np.maximum(ta, tb), 0.0, 1.0)
    p0, p1 = seg[:, 0:2], seg[:, 3:5]
    length = np.linalg.norm(p1 - p0, axis=1) * (t1 - t0)
    n = np.maximum(np.ceil(length / step).astype(np.int64), 1)
    idx = np.repeat(np.arange(len(seg)), n)
    k = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    frac = t0[idx] + (t1 - t0)[idx] * (k + 0.5) / n[idx]
    uv = p0[idx] + (p1 - p0)[idx] * frac[:, None]
    spacing = np.where(n > 1, length / n, np.inf)[idx]
    return np.column_stack([uv, seg[idx, 6], seg[idx, 7], spacing]).astype(np.float32)
