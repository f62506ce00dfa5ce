"""Procedural CT-like axial chest slices: one distinct "patient" per image (`generate`).

Each patient's anatomy (`fingerprint.benchdata.anatomy`) is rendered at a
slice level in Hounsfield-like units on a canvas in the patient frame: body
wall, lungs with the vessels and airways cut by the slice slab, mediastinum,
spine and ribs, the scanner table, tuberculosis-like findings; then blurred
by a point-spread function, given spatially correlated scanner noise and
windowed to uint8. Rendering is numpy on full grids for the large
structures and on bounding boxes for small ones; 400 slices of 256x256 take
a few seconds on one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from fingerprint.benchdata.anatomy import HU, MM_PER_UNIT, Patient, PhantomConfig, make_patient, slab_points


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
    B, org = patient.body, patient.organs
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
    sv = org["spine_v"] * B["b_back"] * width
    sr = org["spine_r"]
    for side in (-1, 1):
        cv.blob(side * (sr + 0.08), sv + 0.1, 0.1, 0.085, B["muscle_hu"] + 5.0, angle=side * 0.3)
    cv.paint(cavity, B["med_hu"])

    # lungs: cavity minus a gap, minus mediastinum, heart, spine block and liver dome
    cavity_in = np.clip(0.5 - (rho - (r_cav - B["lung_gap"])) * unit, 0, 1)
    hw = B["med_width"] * (1.0 - 0.6 * np.clip(-cv.V * 1.5, 0, 1))
    med = np.clip(0.5 - (np.abs(cv.U - 0.02) - hw) * unit, 0, 1)
    heart_k = float(np.clip((t - 0.42) / 0.3, 0.0, 1.0)) ** 0.5
    ha, hb_ratio, hu_, hv, hang = org["heart"]
    excl = [med, cv.ellipse(0.0, sv + 0.02, sr + 0.07, sr + 0.12)]
    if heart_k > 0:
        excl.append(cv.ellipse(hu_ * B["a"], hv, ha * heart_k + 0.03, ha * hb_ratio * heart_k + 0.03, hang))
    liver_t, liver_s = org["liver"]
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
    B, org = p.body, p.organs
    blood = HU["blood"]
    if heart_k > 0:
        ha, hb_ratio, hu_, hv, hang = org["heart"]
        a, b = ha * heart_k + 0.015, ha * hb_ratio * heart_k + 0.015
        cv.blob(hu_ * B["a"], hv, a + 0.012, b + 0.012, B["fat_hu"] - 10.0, hang)  # pericardial fat
        cv.blob(hu_ * B["a"], hv, a, b, blood, hang)
    desc_v = sv - sr - org["aorta_r"] - 0.02
    if t < 0.33:  # aortic arch: an elongated vessel from front right to back left
        cv.blob(0.0, desc_v - 0.12, org["aorta_r"] * 2.2, org["aorta_r"], blood, angle=0.6)
    else:
        cv.blob(0.09, desc_v, org["aorta_r"], org["aorta_r"], blood)
    if 0.33 <= t < 0.62:
        cv.blob(-0.04, -0.1, org["aorta_asc_r"], org["aorta_asc_r"], blood)
    if 0.4 <= t < 0.56:
        cv.blob(0.1, -0.13, org["pa_r"] * 1.3, org["pa_r"], blood, angle=-0.5)
    if t < 0.56:
        cv.blob(-0.14, -0.06, 0.035, 0.03, blood)  # superior vena cava
    air, wall = HU["air"] + 40.0, HU["soft"] - 20.0
    tr = org["trachea_r"]
    tv = desc_v - 0.05
    if t < 0.42:
        cv.blob(0.0, tv, tr + 0.008, tr + 0.006, wall, inner=(tr / (tr + 0.008), air))
    elif t < 0.52:
        for side in (-1, 1):
            cv.blob(side * (0.07 + (t - 0.42) * 1.2), tv + 0.02, tr * 0.75 + 0.007, tr * 0.7, wall, inner=(0.8, air))
    cv.blob(0.035, sv - sr - 0.03, 0.03, 0.022, HU["soft"] - 5.0, inner=(0.35, air) if org["esophagus_air"] else None)


def _spine_and_ribs(cv: _Canvas, p: Patient, t: float, dz: float, sv: float, sr: float, width: float) -> None:
    """Vertebra (body, canal, posterior elements), ribs along the chest wall, sternum and scapulae."""
    B, org = p.body, p.organs
    cortex, marrow = HU["cortex"], HU["marrow"]
    cv.blob(0.0, sv, sr, sr * 0.92, cortex, inner=(0.82, marrow))
    canal_v = sv + sr + org["canal_r"] + 0.012
    cv.blob(0.0, canal_v, org["canal_r"] + 0.016, org["canal_r"] + 0.014, cortex * 0.9)
    cv.blob(0.0, canal_v, org["canal_r"], org["canal_r"] * 0.9, HU["soft"] - 15.0)
    cv.blob(0.0, canal_v + org["canal_r"] + 0.045, 0.014, 0.05, cortex, inner=(0.5, marrow))
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
    scap_k, scap_len = org["scapula"]
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
    pts = slab_points(p.vessels, dz, slab, step_px / cv.unit_px)
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
