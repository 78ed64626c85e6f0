"""Pretraining clip augmentation: uint8 (F, H, W) clip -> float32 tensor (F, H, W) in [0, 1].

Each clip gets one intensity curve and one 2D affine, shared by all its frames (the frames are
the channels of one image), so the cardiac motion between frames is untouched; noise is drawn
per voxel. Built to cost about a millisecond per 16 x 128 x 128 clip on one core, so that the
shard loader keeps up with a GPU: contrast and scale are a 256-entry lookup table applied while
converting from uint8, the affine is a single ``grid_sample`` over the stacked frames, and noise is
a random window of a per-seed bank of normals (MONAI's RandAffine, RandAdjustContrast and
RandGaussianNoise each cost 3-12 ms per clip). The transforms are MONAI ``RandomizableTransform``
s in a MONAI ``Compose``, so ``set_random_state`` seeds the whole chain.

:class:`BatchClipAugment` is the same augmentation for a whole batch (B, ..., H, W) on any device,
for GPU jobs: the loader ships uint8 clips and the accelerator augments them after the transfer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
        angle = self.R.uniform(-self.rotate, self.rotate)
        zoom = self.R.uniform(1.0 - self.scale, 1.0 + self.scale)
        flips = np.where(self.R.rand(2) < 0.5, -1.0, 1.0) if self.flip else np.ones(2)
        shift = self.R.uniform(-self.translate, self.translate, size=2)
        self.set_params(angle, zoom, shift, flips)

    def set_params(
        self,
        angle: float,
        zoom: float,
        shift: tuple[float, float] | np.ndarray = (0.0, 0.0),
        flips: tuple[float, float] | np.ndarray = (1.0, 1.0),
    ) -> None:
        """Fix the affine that a call with ``randomize=False`` applies: rotation in degrees,
        zoom, shift (x, y) as fractions of (W, H), flips (x, y) as +1 or -1."""
        self._do_transform = True
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        flips = np.asarray(flips, dtype=np.float64)
        self._matrix = np.array([[cos, -sin], [sin, cos]]) / zoom * flips  # flips the columns
        self._shift = np.asarray(shift, dtype=np.float64)

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
    c = _as_config(config)
    return Compose(
        [
            RandClipIntensity(c.intensity_prob, c.gamma, c.intensity_scale),
            RandClipAffine(c.spatial_prob, c.rotate, c.scale, c.translate, c.flip, c.mode),
            RandClipNoise(c.noise_prob, c.noise_std),
        ]
    )


def _as_config(config: AugmentConfig | dict[str, Any] | None) -> AugmentConfig:
    if config is None:
        return AugmentConfig()
    if isinstance(config, dict):
        return AugmentConfig.from_dict(config)
    return config


@dataclass(frozen=True)
class BatchParams:
    """One batch's draws, per sample (CPU tensors, first dimension B).

    ``spatial``, ``intensity``, ``noise``: bool (B,), which samples get each transform;
    ``angle`` (degrees), ``zoom``, ``gamma``, ``factor``: float64 (B,); ``shift`` (x, y) as
    fractions of (W, H) and ``flips`` (x, y) as +1 or -1: float64 (B, 2); ``noise_seed`` seeds
    the normals drawn on the clips' device.
    """

    spatial: torch.Tensor
    angle: torch.Tensor
    zoom: torch.Tensor
    shift: torch.Tensor
    flips: torch.Tensor
    intensity: torch.Tensor
    gamma: torch.Tensor
    factor: torch.Tensor
    noise: torch.Tensor
    noise_seed: int


class BatchClipAugment(torch.nn.Module):
    """The pretraining augmentation on a whole batch, on whatever device the batch is:
    uint8 or float (B, ..., H, W) -> float32 (B, ..., H, W) in [0, 1].

    Same :class:`AugmentConfig`, order (intensity curve, affine, noise) and distributions as
    :func:`clip_augment`, drawn independently per sample; every frame (and channel) of a sample
    shares its curve and affine. Meant for ``on_after_batch_transfer``: the loader ships uint8
    clips (a quarter of the float32 bytes) and the accelerator does the arithmetic, one
    ``grid_sample`` for the batch. Parameters come from a CPU ``torch.Generator`` (seeded by
    ``seed`` or :meth:`set_random_state`, or passed per call), so the same seed draws the same
    parameters on every device; a sample whose transform is off is left bit-exact (x / 255).
    """

    def __init__(
        self, config: AugmentConfig | dict[str, Any] | None = None, seed: int | None = None
    ) -> None:
        super().__init__()
        self.config = _as_config(config)
        self.generator = torch.Generator()
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None) -> BatchClipAugment:
        """Reseed the parameter draws (and through them the noise); None seeds from entropy."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        return self

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> BatchParams:
        """Draw every sample's parameters (CPU ``generator``, default this module's own)."""
        g = self.generator if generator is None else generator
        c, n = self.config, batch_size

        def uniform(low: float, high: float, *size: int) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, *size, generator=g, dtype=torch.float64)

        def chance(prob: float, *size: int) -> torch.Tensor:
            return torch.rand(n, *size, generator=g, dtype=torch.float64) < prob

        flips = torch.where(chance(0.5, 2), -1.0, 1.0) if c.flip else torch.ones(n, 2)
        return BatchParams(
            spatial=chance(c.spatial_prob),
            angle=uniform(-c.rotate, c.rotate),
            zoom=uniform(1.0 - c.scale, 1.0 + c.scale),
            shift=uniform(-c.translate, c.translate, 2),
            flips=flips.to(torch.float64),
            intensity=chance(c.intensity_prob),
            gamma=uniform(*c.gamma),
            factor=uniform(1.0 - c.intensity_scale, 1.0 + c.intensity_scale),
            noise=chance(c.noise_prob),
            noise_seed=int(torch.randint(2**62, (1,), generator=g)),
        )

    def forward(
        self,
        clips: torch.Tensor,
        generator: torch.Generator | None = None,
        params: BatchParams | None = None,
    ) -> torch.Tensor:
        """uint8 (or float in [0, 1]) (B, ..., H, W) -> float32 (B, ..., H, W), augmented.

        ``params`` (from :meth:`sample`) fixes the draws; otherwise they come from
        ``generator`` or this module's own.
        """
        if clips.ndim < 3 or not (clips.dtype == torch.uint8 or clips.is_floating_point()):
            raise ValueError(
                "clips must be a uint8 or float tensor (B, ..., H, W), got "
                f"{clips.dtype} {tuple(clips.shape)}"
            )
        batch, (height, width) = clips.shape[0], clips.shape[-2:]
        p = self.sample(batch, generator) if params is None else params
        if len(p.spatial) != batch:
            raise ValueError(f"params are for {len(p.spatial)} samples, the batch has {batch}")
        c = self.config
        x = to_unit(clips).reshape(batch, -1, height, width)  # frames (and channels) as channels
        _apply(x, p.intensity, lambda sub, i: _curve(sub, p.gamma[i], p.factor[i]))
        theta = _theta(p, height, width)
        _apply(x, p.spatial, lambda sub, i: _warp(sub, theta[i], c.mode))
        if c.noise_std > 0:
            noise = self._device_generator(x.device).manual_seed(p.noise_seed)
            _apply(x, p.noise, lambda sub, i: _add_noise(sub, c.noise_std, noise))
        return x.view(clips.shape)

    def _device_generator(self, device: torch.device) -> torch.Generator:
        if device not in self._device_generators:
            self._device_generators[device] = torch.Generator(device=device)
        return self._device_generators[device]


def to_unit(clips: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 x / 255 (a new tensor, exactly the CPU loader's values); float: a float32
    copy."""
    if clips.dtype != torch.uint8:
        return clips.to(torch.float32, copy=True)
    # A 0-dim tensor on the clips' device: CUDA turns division by a Python scalar into a
    # multiplication by its reciprocal, which is off by an ulp for some values.
    return clips.to(torch.float32).div_(torch.tensor(255.0, device=clips.device))


def _apply(
    x: torch.Tensor, mask: torch.Tensor, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> None:
    """x[mask] = fn(x[mask], mask) in place (x: (B, C, H, W)); skipped samples stay untouched.

    The mask is on the CPU, so choosing the samples never waits for the device.
    """
    if not mask.any():
        return
    if mask.all():
        x.copy_(fn(x, mask))
        return
    index = mask.nonzero().squeeze(1)
    on_device = index.to(x.device, non_blocking=True)
    x.index_copy_(0, on_device, fn(x.index_select(0, on_device), index))


def _curve(x: torch.Tensor, gamma: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """min(x ** gamma * factor, 1) per sample: (n, C, H, W) with gamma, factor (n,)."""
    gamma = gamma.to(x.device, torch.float32).view(-1, 1, 1, 1)
    factor = factor.to(x.device, torch.float32).view(-1, 1, 1, 1)
    return x.clamp(0.0, 1.0).pow_(gamma).mul_(factor).clamp_(max=1.0)


def _theta(p: BatchParams, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) float64 ``affine_grid`` matrices, as :class:`RandClipAffine` builds them."""
    radians = torch.deg2rad(p.angle)
    cos, sin = torch.cos(radians), torch.sin(radians)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    matrix = rotation / p.zoom.view(-1, 1, 1) * p.flips.view(-1, 1, 2)  # flips the columns
    # Rotation in pixel units: conjugate by diag(2/W, 2/H), as RandClipAffine does.
    aspect = torch.tensor([[1.0, height / width], [width / height, 1.0]], dtype=torch.float64)
    return torch.cat([matrix * aspect, 2.0 * p.shift.view(-1, 2, 1)], dim=2)


def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str) -> torch.Tensor:
    """One affine per sample over all its channels: (n, C, H, W) with theta (n, 2, 3)."""
    theta = theta.to(x.device, torch.float32)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _add_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """x + N(0, std^2) per voxel, clipped to [0, 1]: normals drawn on x's device."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x.add_(noise, alpha=std).clamp_(0.0, 1.0)
