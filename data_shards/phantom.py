"""Deterministic synthetic short-axis cine / LGE phantom of a beating heart (numpy only).

Geometry is drawn in mm per subject from ``np.random.default_rng([seed, index])`` and rasterised
exactly (no anti-aliasing) on the pixel grid, so label maps are exact for every frame:

* LV cavity: an ellipse (aspect 0.85-1) shrinking from base to apex like a half ellipsoid;
  its area follows ``1 - EF * c(t)`` where ``c`` is a raised-cosine contraction curve
  (0 at ED = frame 0, 1 at end systole, systole ~30-42% of the cycle depending on heart rate).
* Myocardium: a confocal elliptical ring whose area is kept constant per slice (it thickens
  in systole), so the myocardial volume is constant over the cycle.
* RV cavity: a crescent on the septal side, between the LV epicardium and an outer boundary
  ``r_epi + k(t) h(angle)``; ``k`` is solved per slice and frame so the RV area follows its EF.

The field of view is ``size * spacing`` mm; the heart needs about 130 mm, a smaller field of
view crops it (label maps and volumes stay consistent, the achieved EF drifts from the target).
Meta volumes and EFs are computed from the label maps with :func:`volumes_ml`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrfm_io.modalities import MODALITIES
from data_shards.record import INFARCT, LV, MYO, RV, Subject
from data_shards.volumes import ejection_fraction, volumes_ml


def _check_int(name: str, value: object, low: int, where: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{where}, got {value!r}")


@dataclass(frozen=True)
class PhantomConfig:
    """Acquisition settings; for ``modality="lge"`` frames is ignored (T = 1)."""

    slices: int = 8
    frames: int = 16
    size: int = 80  # H = W pixels
    spacing: float = 2.0  # in-plane mm (dy = dx)
    slice_thickness: float = 10.0  # dz mm
    modality: str = "cine"  # "cine" or "lge"
    noise: float = 0.04  # Rician noise std relative to max intensity

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        _check_int("slices", self.slices, 1)
        _check_int("size", self.size, 32)
        if self.modality == "cine":
            _check_int("frames", self.frames, 2, " for cine")
        for name in ("spacing", "slice_thickness"):
            if not np.isfinite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not np.isfinite(self.noise) or self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise!r}")


def _contraction(phase: np.ndarray, systole: float) -> np.ndarray:
    """Smooth periodic contraction curve in [0, 1]: 0 at phase 0 (ED), 1 at phase ``systole`` (ES)."""
    p = np.mod(phase, 1.0)
    up = 0.5 * (1 - np.cos(np.pi * p / systole))
    down = 0.5 * (1 + np.cos(np.pi * (p - systole) / (1 - systole)))
    return np.where(p < systole, up, down)


def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) row-normalised Gaussian blur matrix (edges renormalised)."""
    i = np.arange(n)
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
    return g / g.sum(axis=1, keepdims=True)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], knots: int) -> np.ndarray:
    """(S, H, W) smooth random field in [0, 1]: Gaussian-RBF combination of random knot weights."""
    s, h, w = shape
    c = np.linspace(0, 1, knots)
    by = np.exp(-0.5 * ((np.linspace(0, 1, h)[:, None] - c) * (knots - 1)) ** 2)
    bx = np.exp(-0.5 * ((np.linspace(0, 1, w)[:, None] - c) * (knots - 1)) ** 2)
    f = by @ rng.standard_normal((s, knots, knots)) @ bx.T
    return (f - f.min()) / max(float(np.ptp(f)), 1e-9)


def make_subject(seed: int, index: int, config: PhantomConfig = PhantomConfig()) -> Subject:
    """One phantom study: image float32 (S, T, H, W) >= 0, label uint8 (S, T, H, W), T = 1 for LGE."""
    _check_int("seed", seed, 0)
    _check_int("index", index, 0)
    cfg = config
    lge = cfg.modality == "lge"
    S, T, N, sp = cfg.slices, 1 if lge else cfg.frames, cfg.size, float(cfg.spacing)
    rng = np.random.default_rng([int(seed), int(index)])

    # --- per-subject parameters (fixed draw order: cine and LGE of one index share the heart)
    r_lv = rng.uniform(22, 30)  # LV ED endocardial radius at the base, mm
    aspect = rng.uniform(0.85, 1.0)
    psi = rng.uniform(0, np.pi)  # orientation of the LV ellipse
    wall = rng.uniform(7, 12)  # ED wall thickness at the base, mm
    apex_lv = rng.uniform(0.92, 1.05)  # endocardial apex, in units of the stack length
    apex_rv = rng.uniform(0.8, 0.95)
    rv_dir = np.deg2rad(195 + rng.uniform(-25, 25))  # RV direction from the LV centre
    rv_half = np.deg2rad(rng.uniform(65, 85))  # angular half-width of the crescent
    rv_depth = rng.uniform(20, 30)  # ED crescent thickness at the base, mm
    centre = rng.uniform(-3, 3, 2) * sp - 10 * np.array([np.cos(rv_dir), np.sin(rv_dir)])
    hr = rng.uniform(60, 100)
    ef_lv, ef_rv = rng.uniform(0.35, 0.70), rng.uniform(0.35, 0.65)
    systole = 0.30 + 0.12 * (hr - 60) / 40  # systole takes a larger share of a faster cycle

    # --- per-slice, per-frame radii
    u = (np.arange(S) + 0.5) / S  # base (0) to apex (1)
    f_lv = np.sqrt(np.clip(1 - (u / apex_lv) ** 2, 0, None))
    f_rv = np.sqrt(np.clip(1 - (u / apex_rv) ** 2, 0, None))
    c = _contraction(np.arange(T) / T, systole)  # (T,)
    endo_ed = r_lv * f_lv  # (S,)
    epi_ed = endo_ed + wall * (1 - 0.3 * u)
    endo = endo_ed[:, None] * np.sqrt(1 - ef_lv * c)[None, :]  # (S, T): area ~ 1 - EF c
    epi = np.sqrt(endo**2 + (epi_ed**2 - endo_ed**2)[:, None])  # constant ring area

    # RV: area(k) = k P + k^2 Q with P = epi * depth * I1, Q = depth^2 I2 / 2 (continuous)
    d = np.linspace(-rv_half, rv_half, 513)
    prof = np.clip(np.cos(0.5 * np.pi * d / rv_half), 0, 1) ** 0.7
    unit = aspect / np.sqrt(
        (aspect * np.cos(d + rv_dir - psi)) ** 2 + np.sin(d + rv_dir - psi) ** 2
    )
    i1, i2 = (unit * prof).mean() * 2 * rv_half, (prof**2).mean() * 2 * rv_half
    depth = rv_depth * f_rv[:, None]  # (S, 1)
    p_, q_ = epi * depth * i1, depth**2 * i2 / 2
    target = (p_[:, :1] + q_) * (1 - ef_rv * c)[None, :]
    k = np.where(q_ > 0, (-p_ + np.sqrt(p_**2 + 4 * q_ * target)) / np.maximum(2 * q_, 1e-12), 0)

    # --- rasterise on the pixel grid (mm, LV centre at the origin)
    g = (np.arange(N) - (N - 1) / 2) * sp
    x, y = g[None, :] - centre[0], g[:, None] - centre[1]
    rho, theta = np.hypot(x, y), np.arctan2(y, x)
    e = aspect / np.sqrt((aspect * np.cos(theta - psi)) ** 2 + np.sin(theta - psi) ** 2)
    q = rho / e  # elliptical radius: endo/epi are q < r
    dt = np.angle(np.exp(1j * (theta - rv_dir)))  # angle from the RV direction, (-pi, pi]
    h = np.clip(np.cos(0.5 * np.pi * np.clip(dt / rv_half, -1, 1)), 0, 1) ** 0.7
    en, ep = endo[:, :, None, None], epi[:, :, None, None]
    rv_out = ep * e + (k * depth)[:, :, None, None] * h
    lv_m, myo_m = q < en, (q >= en) & (q < ep)
    rv_m = (q >= ep) & (rho < rv_out) & (h > 0)
    rv_wall = (rho >= rv_out) & (rho < rv_out + 3.0) & (h > 0) & ~myo_m  # image only
    label = np.zeros((S, T, N, N), np.uint8)
    label[lv_m], label[myo_m], label[rv_m] = LV, MYO, RV

    # --- intensities: textured background, dark lung, bright liver/fat blobs, epicardial fat
    bg = 0.1 + 0.4 * _smooth_field(rng, (S, N, N), max(4, round(N * sp / 30)))
    blobs = [(rv_dir + np.pi + rng.uniform(-0.4, 0.4), -0.3)]  # lung, lateral to the LV
    blobs += [(rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.4)) for _ in range(2)]
    for ang, amp in blobs:
        r_b, s_b = rng.uniform(65, 85), rng.uniform(10, 18)
        bg += amp * np.exp(
            -((x - r_b * np.cos(ang)) ** 2 + (y - r_b * np.sin(ang)) ** 2) / (2 * s_b**2)
        )
    fat_w = rng.uniform(1.5, 4.5) * (1 + np.cos(theta - rng.uniform(0, 2 * np.pi)))  # (H, W) mm
    fat = ((q < ep + fat_w) | ((rho < rv_out + 3 + fat_w) & (h > 0))) & ~(
        lv_m | myo_m | rv_m | rv_wall
    )
    if lge:
        blood, myo, fat_i, bg = rng.uniform(0.4, 0.55), 0.05, rng.uniform(0.45, 0.6), 0.7 * bg
    else:
        blood, myo, fat_i = rng.uniform(0.85, 0.95), rng.uniform(0.25, 0.35), rng.uniform(0.65, 0.8)
    img = np.broadcast_to(np.clip(bg, 0.02, None)[:, None], label.shape).copy()
    img[fat] = fat_i
    img[rv_wall | myo_m] = myo
    img[lv_m | rv_m] = blood

    meta: dict[str, Any] = {
        "source": "phantom",
        "modality": cfg.modality,
        "group": None,
        "height": None,
        "weight": None,
    }
    if lge:  # enhancement in an angular sector on a contiguous range of slices
        width = np.deg2rad(rng.uniform(30, 120))
        mid = rng.uniform(-np.pi, np.pi)
        n_sl = int(rng.integers(min(2, S), max(min(2, S), S // 2 + 1) + 1))
        first = int(rng.integers(0, S - n_sl + 1))
        transmural = 1.0 if rng.random() < 0.5 else rng.uniform(0.4, 0.8)
        frac = (q - en) / np.maximum(ep - en, 1e-6)  # 0 at endo, 1 at epi
        sector = np.abs(np.angle(np.exp(1j * (theta - mid)))) <= width / 2
        inf = myo_m & sector & (frac < transmural)
        inf[:first] = inf[first + n_sl :] = False
        label[inf] = INFARCT
        img[inf] = rng.uniform(0.9, 1.0)
    img = _gauss_matrix(N, 0.7) @ img @ _gauss_matrix(N, 0.7).T  # blur H and W
    yy, xx = np.meshgrid(np.linspace(-1, 1, N), np.linspace(-1, 1, N), indexing="ij")
    terms = np.stack([xx, yy, xx * yy, xx**2, yy**2])
    bias = np.tensordot(rng.uniform(-1, 1, 5), terms, 1)
    img *= 1 + 0.2 * bias / max(float(np.abs(bias).max()), 1e-9)
    std = cfg.noise * float(img.max())
    img = np.hypot(img + std * rng.standard_normal(img.shape), std * rng.standard_normal(img.shape))

    spacing = (float(cfg.slice_thickness), sp, sp)
    lv_v, rv_v = volumes_ml(label, spacing, LV), volumes_ml(label, spacing, RV)
    ed = int(np.argmax(lv_v))
    es = int(np.argmin(lv_v))
    myo_v = volumes_ml(label, spacing, MYO) + volumes_ml(label, spacing, INFARCT)
    meta.update(ed=ed, es=es, heart_rate_bpm=float(hr), frame_time_ms=float(60000.0 / hr / T))
    meta.update(target_lv_ef=float(ef_lv * 100), target_rv_ef=float(ef_rv * 100))
    meta.update(lv_edv_ml=float(lv_v[ed]), rv_edv_ml=float(rv_v.max()), myo_ml=float(myo_v[ed]))
    if lge:  # a single diastolic frame: no end-systole, no EF
        meta.update(lv_esv_ml=None, lv_ef=None, rv_esv_ml=None, rv_ef=None)
        meta["infarct_ml"] = float(volumes_ml(label, spacing, INFARCT)[0])
    else:
        meta.update(lv_esv_ml=float(lv_v[es]), lv_ef=ejection_fraction(lv_v.max(), lv_v.min()))
        meta.update(rv_esv_ml=float(rv_v.min()), rv_ef=ejection_fraction(rv_v.max(), rv_v.min()))
    return Subject(f"phantom-{seed:04d}-{index:05d}", img.astype(np.float32), label, spacing, meta)


def make_cohort(
    n: int, seed: int = 0, config: PhantomConfig = PhantomConfig(), lge_fraction: float = 0.0
) -> Iterator[Subject]:
    """Yield ``n`` subjects (index 0..n-1); round(n * lge_fraction) of them, evenly spread, are LGE."""
    _check_int("n", n, 0)
    if not 0.0 <= lge_fraction <= 1.0:
        raise ValueError(f"lge_fraction must be in [0, 1], got {lge_fraction!r}")
    lge_cfg = dataclasses.replace(config, modality="lge")
    for i in range(n):
        is_lge = np.floor((i + 1) * lge_fraction + 0.5) > np.floor(i * lge_fraction + 0.5)
        yield make_subject(seed, i, lge_cfg if is_lge else config)
