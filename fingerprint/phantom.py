"""Procedural CT-like axial chest slices: one distinct "patient" per image.

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

Everything is computed in Hounsfield-like units, then windowed to uint8.
Randomness comes from `np.random.default_rng([seed, patient])`, so patient `i`
is the same whatever the number of patients drawn. Rendering is numpy on full
grids for the large structures and on bounding boxes for small ones; 400 slices
of 256x256 take a few seconds on one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

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


def _slab_points(seg: np.ndarray, dz: float, half: float, step: float) -> np.ndarray:
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


class _Canvas:
    """An HU canvas with the patient-frame coordinates of every pixel."""

    def __init__(self, size: int, pose: tuple[float, float, float, float]):
        self.size = size
        self.px = 2.0 / size
        cx, cy, rot, scale = pose
        self.cx, self.cy, self.cos, self.sin, self.scale = cx, cy, math.cos(rot), math.sin(rot), scale
        c = (np.arange(size, dtype=np.float32) + 0.5) * self.px - 1.0
        self.x = c[None, :]
        self.y = c[:, None]
        dx, dy = self.x - cx, self.y - cy
        self.U = (self.cos * dx + self.sin * dy) / scale
        self.V = (-self.sin * dx + self.cos * dy) / scale
        self.hu = np.full((size, size), HU["air"], np.float32)
        self.unit_px = scale / self.px  # pixels per patient-frame unit

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        s = self.scale
        return self.cx + s * (self.cos * u - self.sin * v), self.cy + s * (self.sin * u + self.cos * v)

    def box(self, u: float, v: float, r: float) -> tuple[slice, slice] | None:
        """Pixel window holding a patient-frame disc of radius r at (u, v), or None when off-image."""
        x, y = self.to_image(u, v)
        rp = r * self.scale + 2 * self.px
        j0, j1 = int((x - rp + 1) / self.px), int(math.ceil((x + rp + 1) / self.px))
        i0, i1 = int((y - rp + 1) / self.px), int(math.ceil((y + rp + 1) / self.px))
        j0, i0 = max(j0, 0), max(i0, 0)
        j1, i1 = min(j1, self.size), min(i1, self.size)
        if j1 <= j0 or i1 <= i0:
            return None
        return slice(i0, i1), slice(j0, j1)

    def ellipse(self, u, v, a, b, angle=0.0, win=None):
        """Soft (anti-aliased) mask of an ellipse, on the window `win` or the full grid."""
        U, V = (self.U, self.V) if win is None else (self.U[win], self.V[win])
        du, dv = U - u, V - v
        if angle:
            c, s = math.cos(angle), math.sin(angle)
            du, dv = c * du + s * dv, -s * du + c * dv
        q = np.sqrt((du / a) ** 2 + (dv / b) ** 2)
        return np.clip(0.5 - (q - 1.0) * (min(a, b) * self.unit_px), 0.0, 1.0)

    def paint(self, mask, value, win=None) -> None:
        target = self.hu if win is None else self.hu[win]
        target += mask * (value - target)

    def blob(self, u, v, a, b, value, angle=0.0, inner=None) -> None:
        """Paint an ellipse on its bounding box; `inner` = (scale, value) paints a concentric core."""
        win = self.box(u, v, max(a, b))
        if win is None:
            return
        self.paint(self.ellipse(u, v, a, b, angle, win), value, win)
        if inner is not None:
            k, value2 = inner
            self.paint(self.ellipse(u, v, a * k, b * k, angle, win), value2, win)


def _radius(theta: np.ndarray, a: float, b_front: float, b_back: float, p: float, harm) -> np.ndarray:
    """Super-ellipse radius at angle theta (v > 0 is the back), with harmonic wobble."""
    c, s = np.abs(np.cos(theta)), np.sin(theta)
    b = np.where(s > 0, b_back, b_front)
    r = ((c / a) ** p + (np.abs(s) / b) ** p) ** (-1.0 / p)
    for k, amp, ph in harm:
        r = r * (1.0 + amp * np.cos(k * theta + ph))
    return r


def render_slice(patient: Patient, slice_index: int, config: PhantomConfig, *, seed: int = 0) -> np.ndarray:
    """Render slice `slice_index` of `patient` as a uint8 (size x size) image."""
    size = config.size
    dz = (slice_index - (config.slices_per_patient - 1) / 2) * config.slice_spacing_mm / MM_PER_UNIT
    t = float(np.clip(patient.level + dz * MM_PER_UNIT / 250.0, 0.0, 1.0))  # ~250 mm apex to base
    cv = _Canvas(size, patient.pose)
    B, O = patient.body, patient.organs
    rho = np.sqrt(cv.U**2 + cv.V**2)
    theta = np.arctan2(cv.V, cv.U)

    # body: narrower at the apex, widest at mid chest
    width = 0.9 + 0.1 * math.sin(math.pi * min(t * 1.2, 1.0))
    r_body = _radius(theta, B["a"] * width, B["b_front"] * width, B["b_back"] * width, B["p"], B["harm"])
    unit = cv.unit_px
    body = np.clip(0.5 - (rho - r_body) * unit, 0, 1)
    cv.paint(body, HU["soft"])
    r_fat_in = r_body - B["skin"]
    cv.paint(np.clip(0.5 - (rho - r_fat_in) * unit, 0, 1), B["fat_hu"])
    fat_t = B["fat"] * (1.0 + B["fat_harm"][0] * np.cos(2 * theta + B["fat_harm"][1]))
    r_mus = r_fat_in - fat_t
    cv.paint(np.clip(0.5 - (rho - r_mus) * unit, 0, 1), B["muscle_hu"])
    front = np.clip(-np.sin(theta), 0, 1) ** 2  # pectoral muscles thicken the front wall
    r_cav = r_mus - B["muscle"] - B["pectoral"] * front
    # the spine pushes the back of the cavity forward
    r_cav = r_cav - 0.12 * np.exp(-(((theta - math.pi / 2) / 0.35) ** 2))
    cavity = np.clip(0.5 - (rho - r_cav) * unit, 0, 1)

    # paraspinal muscles, then the mediastinal fat inside the cavity
    sv = O["spine_v"] * B["b_back"] * width
    sr = O["spine_r"]
    for side in (-1, 1):
        cv.blob(side * (sr + 0.08), sv + 0.1, 0.1, 0.085, B["muscle_hu"] + 5.0, angle=side * 0.3)
    cv.paint(cavity, B["med_hu"])

    # lungs: cavity minus a gap, minus mediastinum, heart, spine block and liver dome
    cavity_in = np.clip(0.5 - (rho - (r_cav - B["lung_gap"])) * unit, 0, 1)
    hw = B["med_width"] * (1.0 - 0.6 * np.clip(-cv.V * 1.5, 0, 1))
    med = np.clip(0.5 - (np.abs(cv.U - 0.02) - hw) * unit, 0, 1)
    heart_k = float(np.clip((t - 0.42) / 0.3, 0.0, 1.0)) ** 0.5
    ha, hb_ratio, hu_, hv, hang = O["heart"]
    excl = [med, cv.ellipse(0.0, sv + 0.02, sr + 0.07, sr + 0.12)]
    if heart_k > 0:
        excl.append(cv.ellipse(hu_ * B["a"], hv, ha * heart_k + 0.03, ha * hb_ratio * heart_k + 0.03, hang))
    liver_t, liver_s = O["liver"]
    liver_k = float(np.clip((t - liver_t) / 0.2, 0.0, 1.0))
    if liver_k > 0:
        liver = cv.ellipse(-0.45 * B["a"], 0.22, 0.6 * liver_s * (0.5 + liver_k), 0.5 * liver_s * (0.5 + liver_k), -0.3)
        excl.append(liver)
    lung = cavity_in.copy()
    for m in excl:
        np.minimum(lung, 1.0 - m, out=lung)
    lung_hu = B["lung_hu"] + B["lung_grad"] * np.clip(cv.V, -0.5, 0.7)
    cv.paint(lung, lung_hu)
    if liver_k > 0:
        cv.paint(np.minimum(liver, cavity), HU["soft"] + 18.0)

    _mediastinum(cv, patient, t, sv, sr, heart_k)
    _spine_and_ribs(cv, patient, t, dz, sv, sr, width)
    _lung_contents(cv, patient, dz, lung, config)

    _table(cv, patient, body)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, patient.index, slice_index, 0x7015E])
    hu = ndimage.gaussian_filter(cv.hu, patient.psf_px, mode="nearest", truncate=3.0)
    if patient.noise_hu > 0:
        # spatially correlated noise: white noise summed over 2x2 neighbourhoods (unit variance)
        w = rng.standard_normal((size + 1, size + 1), dtype=np.float32)
        noise = (w[:-1, :-1] + w[1:, :-1] + w[:-1, 1:] + w[1:, 1:]) * 0.5
        hu += noise * patient.noise_hu * (0.6 + 0.4 * np.clip((hu + 1000.0) / 1000.0, 0, 1.5))
    outside = (cv.x**2 + cv.y**2) > patient.fov**2
    lo, hi = patient.window
    img = np.clip((hu - lo) * (255.0 / (hi - lo)), 0, 255)
    img[np.broadcast_to(outside, img.shape)] = 0
    return np.rint(img).astype(np.uint8)


def _mediastinum(cv: _Canvas, p: Patient, t: float, sv: float, sr: float, heart_k: float) -> None:
    """Heart, great vessels, trachea or main bronchi, esophagus; which ones depends on the level."""
    B, O = p.body, p.organs
    blood = HU["blood"]
    if heart_k > 0:
        ha, hb_ratio, hu_, hv, hang = O["heart"]
        a, b = ha * heart_k + 0.015, ha * hb_ratio * heart_k + 0.015
        cv.blob(hu_ * B["a"], hv, a + 0.012, b + 0.012, B["fat_hu"] - 10.0, hang)  # pericardial fat
        cv.blob(hu_ * B["a"], hv, a, b, blood, hang)
    desc_v = sv - sr - O["aorta_r"] - 0.02
    if t < 0.33:  # aortic arch: an elongated vessel from front right to back left
        cv.blob(0.0, desc_v - 0.12, O["aorta_r"] * 2.2, O["aorta_r"], blood, angle=0.6)
    else:
        cv.blob(0.09, desc_v, O["aorta_r"], O["aorta_r"], blood)
    if 0.33 <= t < 0.62:
        cv.blob(-0.04, -0.1, O["aorta_asc_r"], O["aorta_asc_r"], blood)
    if 0.4 <= t < 0.56:
        cv.blob(0.1, -0.13, O["pa_r"] * 1.3, O["pa_r"], blood, angle=-0.5)
    if t < 0.56:
        cv.blob(-0.14, -0.06, 0.035, 0.03, blood)  # superior vena cava
    air, wall = HU["air"] + 40.0, HU["soft"] - 20.0
    tr = O["trachea_r"]
    tv = desc_v - 0.05
    if t < 0.42:
        cv.blob(0.0, tv, tr + 0.008, tr + 0.006, wall, inner=(tr / (tr + 0.008), air))
    elif t < 0.52:
        for side in (-1, 1):
            cv.blob(side * (0.07 + (t - 0.42) * 1.2), tv + 0.02, tr * 0.75 + 0.007, tr * 0.7, wall, inner=(0.8, air))
    cv.blob(0.035, sv - sr - 0.03, 0.03, 0.022, HU["soft"] - 5.0, inner=(0.35, air) if O["esophagus_air"] else None)


def _spine_and_ribs(cv: _Canvas, p: Patient, t: float, dz: float, sv: float, sr: float, width: float) -> None:
    """Vertebra (body, canal, posterior elements), ribs along the chest wall, sternum and scapulae."""
    B, O = p.body, p.organs
    cortex, marrow = HU["cortex"], HU["marrow"]
    cv.blob(0.0, sv, sr, sr * 0.92, cortex, inner=(0.82, marrow))
    canal_v = sv + sr + O["canal_r"] + 0.012
    cv.blob(0.0, canal_v, O["canal_r"] + 0.016, O["canal_r"] + 0.014, cortex * 0.9)
    cv.blob(0.0, canal_v, O["canal_r"], O["canal_r"] * 0.9, HU["soft"] - 15.0)
    cv.blob(0.0, canal_v + O["canal_r"] + 0.045, 0.014, 0.05, cortex, inner=(0.5, marrow))
    for side in (-1, 1):
        cv.blob(side * (sr * 0.95 + 0.03), canal_v - 0.01, 0.055, 0.016, cortex, angle=side * 0.35, inner=(0.5, marrow))
    # ribs slide round the wall with the level (they run obliquely)
    for ang0, drift, half_len, half_w in p.ribs:
        ang = float(ang0 + drift * (t - p.level) * 0.8 + drift * dz)
        # body radius at this angle (same formula as the grid), minus the wall layers
        rc = float(
            _radius(np.array([ang]), B["a"] * width, B["b_front"] * width, B["b_back"] * width, B["p"], B["harm"])[0]
        )
        r_wall = rc - B["skin"] - B["fat"] - B["muscle"] * 0.6
        u, v = r_wall * math.cos(ang), r_wall * math.sin(ang)
        front = math.sin(ang) < -0.45
        value = HU["cartilage"] if front else cortex
        cv.blob(u, v, half_len, half_w, value, angle=ang + math.pi / 2, inner=None if front else (0.6, marrow))
    if 0.3 < t < 0.85:
        sy = (
            -float(
                _radius(
                    np.array([-math.pi / 2]),
                    B["a"] * width,
                    B["b_front"] * width,
                    B["b_back"] * width,
                    B["p"],
                    B["harm"],
                )[0]
            )
            + B["skin"]
            + B["fat"] * 0.8
            + 0.03
        )
        cv.blob(0.0, sy, 0.07, 0.025, cortex, inner=(0.7, marrow))
    scap_k, scap_len = O["scapula"]
    if t < 0.6:
        for side in (-1, 1):
            # along the back wall, oriented like the wall between two nearby angles
            angs = np.array([math.pi / 2 - side * (0.95 * scap_k + d) for d in (-0.12, 0.0, 0.12)])
            rb = _radius(angs, B["a"] * width, B["b_front"] * width, B["b_back"] * width, B["p"], B["harm"])
            rb = rb - B["skin"] - B["fat"] - 0.015
            pu, pv = rb * np.cos(angs), rb * np.sin(angs)
            tang = math.atan2(pv[2] - pv[0], pu[2] - pu[0])
            cv.blob(float(pu[1]), float(pv[1]), scap_len, 0.013, cortex, angle=tang)


def _lung_contents(cv: _Canvas, p: Patient, dz: float, lung: np.ndarray, config: PhantomConfig) -> None:
    """Vessels and bronchi cut by the slice slab, then the findings, all clipped to the lungs."""
    size = cv.size
    slab = config.slice_thickness_mm / 2 / MM_PER_UNIT
    step_px = 0.5
    pts = _slab_points(p.vessels, dz, slab, step_px / cv.unit_px)
    rows, cols = np.nonzero(lung.max(axis=1) > 0)[0], np.nonzero(lung.max(axis=0) > 0)[0]
    if len(pts) and len(rows):
        # work on the lungs' bounding box (plus a blur margin) only
        m = 8
        r0, r1 = max(rows[0] - m, 0), min(rows[-1] + 1 + m, size)
        c0, c1 = max(cols[0] - m, 0), min(cols[-1] + 1 + m, size)
        win = (slice(r0, r1), slice(c0, c1))
        h, w = r1 - r0, c1 - c0
        x, y = cv.to_image(pts[:, 0], pts[:, 1])
        j = np.floor((x + 1.0) / cv.px).astype(np.int64) - c0
        i = np.floor((y + 1.0) / cv.px).astype(np.int64) - r0
        inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
        r_px = pts[:, 2] * cv.unit_px
        vessel_op = np.zeros((h, w), np.float32)
        airway_op = np.zeros((h, w), np.float32)
        airway_wall = np.zeros((h, w), np.float32)
        for lo, hi in ((0.0, 1.5), (1.5, 3.5), (3.5, 1e9)):
            sel = inside & (r_px >= lo) & (r_px < hi)
            if not sel.any():
                continue
            sigma = max(min(float(np.median(r_px[sel])) * 0.75, 6.0), 0.45)
            for is_air in (0, 1):
                s2 = sel & (pts[:, 3] == is_air)
                if not s2.any():
                    continue
                # a line of points and an isolated cross-section both peak at 1;
                # thin vessels are fainter (partial volume)
                spacing = np.clip(pts[s2, 4] * cv.unit_px, step_px, math.sqrt(2 * math.pi) * sigma)
                weight = np.minimum(r_px[s2] / 1.5, 1.0) * spacing
                splat = np.bincount(i[s2] * w + j[s2], weight, minlength=h * w).astype(np.float32)
                splat = splat.reshape(h, w) * (math.sqrt(2 * math.pi) * sigma)
                if is_air:
                    airway_op += ndimage.gaussian_filter(splat, sigma * 0.7, truncate=3.0)
                    airway_wall += ndimage.gaussian_filter(splat, sigma * 1.3, truncate=3.0) * 1.2
                else:
                    vessel_op += ndimage.gaussian_filter(splat, sigma, truncate=3.0)
        lw = lung[win]
        cv.paint(np.clip(vessel_op * 1.6, 0, 1) * lw, HU["blood"] - 10.0, win)
        cv.paint(np.clip(airway_wall * 1.5, 0, 1) * lw * 0.8, HU["soft"] - 60.0, win)
        cv.paint(np.clip(airway_op * 2.0, 0, 1) * lw, HU["air"] + 30.0, win)
    for f in p.findings:
        _finding(cv, f, dz, lung, slab)


def _finding(cv: _Canvas, f: dict, dz: float, lung: np.ndarray, slab: float) -> None:
    """Draw one tuberculosis-like finding's cross-section, if the slice cuts it."""
    d = abs(f["z"] - dz)
    if f["kind"] == "nodule":
        if d >= f["r"] + slab:
            return
        r = math.sqrt(max(f["r"] ** 2 - max(d - slab, 0.0) ** 2, 1e-6))
        win = cv.box(f["u"], f["v"], r)
        if win is not None:
            m = cv.ellipse(f["u"], f["v"], r, r, 0.0, win) * np.minimum(lung[win] * 1.5, 1.0)
            cv.paint(m, f["hu"], win)
    elif f["kind"] == "cavity":
        if d >= f["r"] + slab:
            return
        k = math.sqrt(max(1.0 - (max(d - slab, 0.0) / f["r"]) ** 2, 0.0))
        r = f["r"] * k
        win = cv.box(f["u"], f["v"], r * 1.3)
        if win is None or r <= 0:
            return
        du, dv = cv.U[win] - f["u"], cv.V[win] - f["v"]
        ang = np.arctan2(dv, du)
        rr = np.ones_like(ang)
        for kk, amp, ph in f["harm"]:
            rr = rr * (1.0 + amp * np.cos(kk * ang + ph))
        rho = np.sqrt(du**2 + dv**2)
        unit = cv.unit_px
        outer = np.clip(0.5 - (rho - r * rr) * unit, 0, 1) * np.minimum(lung[win] * 1.5, 1.0)
        inner = np.clip(0.5 - (rho - max(r - f["wall"], 0.0) * rr) * unit, 0, 1)
        cv.paint(outer, f["hu"], win)
        cv.paint(inner, HU["air"] + 20.0, win)
    else:
        if d >= f["rz"]:
            return
        k = math.sqrt(1.0 - (d / f["rz"]) ** 2)
        a, b = f["a"] * k, f["b"] * k
        win = cv.box(f["u"], f["v"], max(a, b) * 1.05)
        if win is None:
            return
        env = cv.ellipse(f["u"], f["v"], a, b, f["angle"], win)
        h, w = env.shape
        tex = ndimage.zoom(f["texture"], (h / 12.0, w / 12.0), order=1, mode="nearest")[:h, :w]
        if tex.shape != env.shape:
            tex = np.pad(tex, ((0, h - tex.shape[0]), (0, w - tex.shape[1])), mode="edge")
        patchy = np.clip(0.5 + tex * 0.9 + (k - 0.5), 0, 1)
        cv.paint(env * patchy * lung[win], f["hu"], win)


def _table(cv: _Canvas, p: Patient, body: np.ndarray) -> None:
    """The scanner table under the patient: a curved plastic cradle with a 2-pixel denser shell."""
    rows = np.nonzero(body.max(axis=1) > 0.5)[0]
    if not len(rows) or rows[-1] + 1 >= cv.size:
        return
    T = p.table
    r0 = rows[-1] + 1
    y_top = r0 * cv.px - 1.0 + T["gap"]
    y = cv.y[r0:]
    surface = y_top + T["curve"] * (cv.x**2)
    inside = np.minimum(y - surface, surface + T["thick"] - y) / cv.px  # pixels inside the slab
    across = np.clip(0.5 - (np.abs(cv.x) - T["half"]) / cv.px, 0, 1)
    slab = np.clip(inside + 0.5, 0, 1) * across
    shell = slab - np.clip(inside - 1.5, 0, 1) * across
    hu = cv.hu[r0:]
    hu += slab * (T["hu"] - hu)
    hu += shell * (HU["table_shell"] - hu)


@dataclass
class PhantomSet:
    """Rendered slices with who they belong to."""

    images: np.ndarray  # uint8 (n, size, size)
    patient: np.ndarray  # int (n,)
    slice: np.ndarray  # int (n,)
    has_tb: np.ndarray  # bool (n,)


def generate(
    n_images: int, *, seed: int = 0, config: PhantomConfig | None = None, progress: bool = False
) -> PhantomSet:
    """Render `n_images` slices: consecutive groups of `slices_per_patient` come from one patient."""
    config = config or PhantomConfig()
    k = config.slices_per_patient
    n_patients = -(-n_images // k)
    images = np.empty((n_images, config.size, config.size), np.uint8)
    patient_of = np.empty(n_images, np.int64)
    slice_of = np.empty(n_images, np.int64)
    tb = np.empty(n_images, bool)
    it = range(n_patients)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="phantoms", unit="patient")
    n = 0
    for pi in it:
        patient = make_patient(seed, pi, config)
        for s in range(k):
            if n == n_images:
                break
            images[n] = render_slice(patient, s, config, seed=seed)
            patient_of[n], slice_of[n], tb[n] = pi, s, patient.has_tb
            n += 1
    return PhantomSet(images=images, patient=patient_of, slice=slice_of, has_tb=tb)
