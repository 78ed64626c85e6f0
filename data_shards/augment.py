"""Pretraining clip augmentation: uint8 (F, H, W) clip -> float32 tensor (F, H, W) in [0, 1].

Each clip gets one intensity curve and one 2D affine, shared by all its frames (the frames are
the channels of one image), so the cardiac motion between frames is untouched; noise is drawn
per voxel. Built to cost about a millisecond per 16 x 128 x 128 clip on one core, so that the
shard loader keeps up with a GPU: contrast and scale are a 256-entry lookup table applied while
converting from uint8, the affine is a single ``grid_sample`` over the stacked frames, and noise is
a random window of a per-seed bank of normals (MONAI's RandAffine, RandAdjustContrast and
RandGaussianNoise each cost 3-12 ms per clip). The transforms are MONAI ``RandomizableTransform``
s in a MONAI ``Compose``, so ``set_random_state`` seeds the whole chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, RandomizableTransform

_NOISE_BANK = 1 << 20  # normals per bank (4 MB float32): a window of it is one clip's noise


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; every field is a plain YAML value (``augment: {rotate: 15}``).

    Args:
        spatial_prob: chance that a clip gets the random affine.
        rotate: rotation angle uniform in [-rotate, rotate] degrees.
        scale: isotropic zoom uniform in [1 - scale, 1 + scale].
        translate: shift uniform in [-translate, translate] of the image size, per axis.
        flip: random left-right and up-down flips. Off by default: shards are in a canonical
            orientation, and the RV-left-of-LV layout is information, not nuisance.
        mode: ``grid_sample`` interpolation, ``"bilinear"`` or ``"nearest"`` (half the cost).
        intensity_prob: chance that a clip gets a random contrast curve and scale.
        gamma: contrast ``x ** gamma`` with gamma uniform in this range.
        intensity_scale: intensity factor uniform in [1 - s, 1 + s] (then clipped to 1).
        noise_prob: chance that a clip gets Gaussian noise.
        noise_std: standard deviation of the noise, on intensities in [0, 1].
    """

    spatial_prob: float = 0.8
    rotate: float = 10.0
    scale: float = 0.1
    translate: float = 0.05
    flip: bool = False
    mode: str = "bilinear"
    intensity_prob: float = 0.8
    gamma: tuple[float, float] = (0.7, 1.4)
    intensity_scale: float = 0.1
    noise_prob: float = 0.5
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        for name in ("spatial_prob", "intensity_prob", "noise_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("rotate", "translate", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("scale", "intensity_scale"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {self.mode!r}")
        low, high = self.gamma
        if not 0 < low <= high:
            raise ValueError(
                f"gamma must be a range (low, high) with 0 < low <= high, got {low, high}"
            )
        object.__setattr__(self, "gamma", (float(low), float(high)))  # YAML gives a list

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> AugmentConfig:
        """From YAML-style options; an unknown key is an error naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown augment option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)


class RandClipIntensity(RandomizableTransform):
    """uint8 (..., H, W) -> float32 (..., H, W) in [0, 1] through a random contrast/scale curve.

    A float input in [0, 1] takes the same curve computed directly (slower than the uint8 table).
    """

    def __init__(self, prob: float, gamma: tuple[float, float], scale: float) -> None:
        super().__init__(prob)
        self.gamma_range = gamma
        self.scale = scale
        self._gamma, self._factor = 1.0, 1.0
        self._identity = np.arange(256, dtype=np.float32) / np.float32(255.0)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._gamma = self.R.uniform(*self.gamma_range)
            self._factor = self.R.uniform(1.0 - self.scale, 1.0 + self.scale)

    def __call__(self, clip: np.ndarray | torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if isinstance(clip, torch.Tensor) and clip.dtype == torch.uint8:
            clip = clip.numpy()
        if isinstance(clip, np.ndarray) and clip.dtype == np.uint8:
            table = self._identity
            if self._do_transform:
                table = np.minimum(table**self._gamma * self._factor, 1.0).astype(np.float32)
            return torch.from_numpy(np.take(table, clip))  # the same values as x / 255 when off
        clip = torch.as_tensor(clip, dtype=torch.float32)
        if not self._do_transform:
            return clip
        return (clip.clamp(0.0, 1.0) ** self._gamma * self._factor).clamp_(max=1.0)


class RandClipAffine(RandomizableTransform):
    """One random rotation/zoom/shift (and optional flips) for every frame: (..., H, W) float32.

    Rotation is about the image centre and in pixel units, so it stays a rotation on non-square
    images; content moved in from outside the image is zero (background).
    """

    def __init__(
        self, prob: float, rotate: float, scale: float, translate: float, flip: bool, mode: str
    ) -> None:
        super().__init__(prob)
        self.rotate, self.scale, self.translate = rotate, scale, translate
        self.flip, self.mode = flip, mode
        self._matrix = np.eye(2)  # output pixel -> input pixel, centred coordinates
        self._shift = np.zeros(2)  # (x, y) as fractions of (W, H)
        self._grid: tuple[tuple[int, int], torch.Tensor] | None = None

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        angle = math.radians(self.R.uniform(-self.rotate, self.rotate))
        zoom = self.R.uniform(1.0 - self.scale, 1.0 + self.scale)
        cos, sin = math.cos(angle), math.sin(angle)
        flips = np.where(self.R.rand(2) < 0.5, -1.0, 1.0) if self.flip else np.ones(2)
        self._matrix = np.array([[cos, -sin], [sin, cos]]) / zoom * flips  # flips the columns
        self._shift = self.R.uniform(-self.translate, self.translate, size=2)

    def __call__(self, clip: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return clip
        *lead, height, width = clip.shape
        # Normalised coordinates run over [-1, 1] on each axis: conjugate the pixel-space matrix
        # by diag(2/W, 2/H) so that a rotation is one on screen, not in the unit square.
        aspect = np.array([[1.0, height / width], [width / height, 1.0]])
        theta = np.concatenate([self._matrix * aspect, 2.0 * self._shift[:, None]], axis=1)
        theta = torch.as_tensor(theta, dtype=torch.float32)  # (2, 3)
        stack = clip.reshape(1, -1, height, width)  # frames as channels: one grid for all
        grid = (self._base_grid(height, width) @ theta.T).view(1, height, width, 2)
        out = F.grid_sample(stack, grid, mode=self.mode, padding_mode="zeros", align_corners=False)
        return out.reshape(*lead, height, width)

    def _base_grid(self, height: int, width: int) -> torch.Tensor:
        """(H * W, 3) homogeneous output coordinates, as ``affine_grid`` builds them; cached."""
        if self._grid is None or self._grid[0] != (height, width):
            identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
            grid = F.affine_grid(identity, [1, 1, height, width], align_corners=False)
            ones = torch.ones(height * width, 1)
            self._grid = ((height, width), torch.cat([grid.reshape(-1, 2), ones], dim=1))
        return self._grid[1]


class RandClipNoise(RandomizableTransform):
    """Add Gaussian noise (std ``std``) and clip to [0, 1]: float32 (..., H, W).

    The noise is a window at a random offset of a bank of normals drawn once per seed: drawing
    fresh normals for 16 x 128 x 128 voxels costs more than the rest of the augmentation.
    """

    def __init__(self, prob: float, std: float) -> None:
        super().__init__(prob)
        self.std = std
        self._bank: torch.Tensor | None = None
        self._offset = 0

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandClipNoise:
        super().set_random_state(seed, state)
        self._bank = None  # redrawn from the new state, so a seed fixes the noise too
        return self

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._offset = int(self.R.randint(2**31 - 1))

    def __call__(self, clip: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform or self.std == 0:
            return clip
        size = clip.numel()
        if self._bank is None or len(self._bank) < size:
            normals = self.R.standard_normal(max(_NOISE_BANK, 2 * size)).astype(np.float32)
            self._bank = torch.from_numpy(normals)
        start = self._offset % (len(self._bank) - size + 1)
        noise = self._bank[start : start + size].view(clip.shape)
        return clip.add(noise, alpha=self.std).clamp_(0.0, 1.0)


def clip_augment(config: AugmentConfig | dict[str, Any] | None = None) -> Compose:
    """The pretraining augmentation: uint8 (F, H, W) -> float32 tensor (F, H, W) in [0, 1].

    Seed it with ``set_random_state(seed)``; the shard stream does so per worker and epoch.
    """
    if config is None:
        config = AugmentConfig()
    elif isinstance(config, dict):
        config = AugmentConfig.from_dict(config)
    c = config
    return Compose(
        [
            RandClipIntensity(c.intensity_prob, c.gamma, c.intensity_scale),
            RandClipAffine(c.spatial_prob, c.rotate, c.scale, c.translate, c.flip, c.mode),
            RandClipNoise(c.noise_prob, c.noise_std),
        ]
    )
