"""Local contrastive learning for a U-Net's decoder (the local loss of Chaitanya et al.,
NeurIPS 2020, "Contrastive learning of global and local features for medical image segmentation
with limited annotations").

Positional contrast (:mod:`pretext.positional`) trains the encoder half of the U-Net only; a
segmenter fine-tuned from it starts with a random decoder. Chaitanya et al. pretrain the decoder
after the encoder: two views of an image that differ in intensity only stay pixel-aligned, so a
region of one view has its positive in the same region of the other, and the other regions of
that image are its negatives. Run from the released encoder (``PretrainSystem(pretrained=...)``)
with the encoder frozen, it trains the bottom block and the up path the encoder lacks.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from data_shards.augment import AugmentConfig, BatchClipAugment
from foundation.device import to_device
from foundation.unet import CardiacUNet

EMPTY = 0.01  # a region of mean intensity below this is background: sampled only when short


def local_infonce(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over the regions of each image: z1, z2 (N, K, D) unit vectors of the
    same K regions of N images in two views. Region k of view 1 has region k of view 2 as its
    positive and the image's other K - 1 regions of view 2 as negatives, and the other way round.

    Returns (loss, top-1 accuracy: how often a region's most similar one is its positive).
    """
    n, k, _ = z1.shape
    logits = z1 @ z2.transpose(1, 2) / temperature  # (N, K, K): view-1 rows, view-2 columns
    target = torch.arange(k, device=z1.device).repeat(n)
    forward, backward = logits.flatten(0, 1), logits.transpose(1, 2).flatten(0, 1)
    loss = (F.cross_entropy(forward, target) + F.cross_entropy(backward, target)) / 2
    hits = torch.cat([forward.argmax(1), backward.argmax(1)]) == target.repeat(2)
    return loss, hits.float().mean()


class LocalContrastive(nn.Module):
    """Every frame of every clip is an image; its two views share one spatial augmentation and
    differ by independent intensity ones (curve, scale, noise), so they stay pixel-aligned. The
    U-Net's full-resolution output features (the decoder's last map) go through a 1x1
    convolution head to unit vectors per pixel, averaged over the cells of a ``regions`` x
    ``regions`` grid: ``regions_per_image`` of those region vectors per image (regions with
    content first; the head runs on those only) enter :func:`local_infonce`. Negatives come
    from the same image only: its other regions are the hard ones (the same anatomy a few pixels
    on), and each image's similarity matrix stays K x K.

    Batches: {"clip": float (B, 1, T, H, W) in [0, 1], ...}; H and W must divide by ``regions``.
    By default only the decoder half (the bottom block and the up path,
    ``CardiacUNet.decoder_parameters``) and the head learn; the encoder half is frozen (no
    gradients, kept in eval mode), as it came from the weights the backbone was built with.

    Args:
        encoder: a dense backbone (``cmr_unet_*``, :class:`~foundation.unet.CardiacUNet`).
        temperature: of the softmax over similarities (Chaitanya et al. used 0.1).
        regions: side of the grid of local regions (16 at 128 px: 8 x 8-pixel regions).
        regions_per_image: regions sampled per image for the loss (at most ``regions ** 2``).
        hidden, proj_dim: the projection head's widths (1x1 convolutions, ReLU between).
        augment: options of the views' augmentation (``data_shards.augment.AugmentConfig``): its
            spatial part (``spatial_prob``, rotate, scale, translate, flip) is drawn once per image
            and shared by both views; its intensity part (``intensity_prob``, gamma,
            intensity_scale, ``noise_prob``, noise_std) is drawn per view.
        train_encoder: train the encoder half too (Chaitanya et al. kept it fixed).
        mask_ratio: share of the grid cells hidden (set to 0) in each view, drawn per view: 0
            (Chaitanya et al.) leaves each region matchable by its own pixels.
    """

    def __init__(
        self,
        encoder: CardiacUNet,
        temperature: float = 0.1,
        regions: int = 16,
        regions_per_image: int = 64,
        hidden: int = 64,
        proj_dim: int = 32,
        augment: dict | None = None,
        train_encoder: bool = False,
        mask_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, CardiacUNet):
            raise ValueError(
                f"objective 'local' needs a dense backbone (cmr_unet_*), got "
                f"{type(encoder).__name__}: it contrasts per-pixel features"
            )
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        if regions < 1:
            raise ValueError(f"regions={regions} must be >= 1")
        if not 2 <= regions_per_image <= regions**2:
            raise ValueError(
                f"regions_per_image={regions_per_image} must be in 2 .. regions ** 2 = {regions**2}"
            )
        if hidden < 1 or proj_dim < 1:
            raise ValueError(f"hidden={hidden} and proj_dim={proj_dim} must be >= 1")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
        self.mask_ratio = mask_ratio
        self.encoder, self.temperature = encoder, temperature
        self.regions, self.regions_per_image = regions, regions_per_image
        self.train_encoder = train_encoder
        self.head = nn.Sequential(
            nn.Conv2d(encoder.features, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, proj_dim, 1),
        )
        config = AugmentConfig.from_dict(augment or {})
        self.spatial = BatchClipAugment(
            dataclasses.replace(config, intensity_prob=0.0, noise_prob=0.0)
        )
        self.intensity = BatchClipAugment(dataclasses.replace(config, spatial_prob=0.0))
        if not train_encoder:
            for p in encoder.encoder_parameters():
                p.requires_grad_(False)
            self.train(self.training)

    def train(self, mode: bool = True) -> LocalContrastive:
        super().train(mode)
        if not self.train_encoder:  # frozen: no dropout, no norm statistics updated
            for block in self.encoder.encoder_modules():
                block.eval()
        return self

    def views(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images (N, 1, H, W) -> (spatially augmented images, view 1, view 2), each
        (N, 1, H, W): one affine for both views, then an intensity augmentation per view."""
        placed = self.spatial(images, generator)
        views = [self.hide(self.intensity(placed, generator), generator) for _ in range(2)]
        return placed, views[0], views[1]

    def hide(self, view: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """view (N, 1, H, W) with ``mask_ratio`` of its grid cells set to zero, drawn per image
        and per view: a hidden region's features must then come from its context, not its own
        pixels, which an intensity change alone leaves matchable by pattern."""
        if not self.mask_ratio:
            return view
        n, r = view.shape[0], self.regions
        hidden = torch.rand(n, 1, r, r, generator=generator) < self.mask_ratio
        keep = F.interpolate((~hidden).float(), size=view.shape[-2:], mode="nearest")
        return view * to_device(keep, view.device).to(view.dtype)

    def sample_regions(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """images (N, 1, H, W) -> (N, regions_per_image) distinct region indices per image (row
        major): regions with content (mean intensity above ``EMPTY``) first, in random order;
        background ones only where an image has too few (both views of it would be zeros)."""
        content = F.adaptive_avg_pool2d(images, self.regions).flatten(1) > EMPTY  # (N, R*R)
        priority = to_device(torch.rand(content.shape, generator=generator), content.device)
        priority = priority + content
        return priority.topk(self.regions_per_image, dim=1).indices

    def embed(self, views: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """views (M, 1, H, W) and the regions chosen in each, (M, K) indices into the row-major
        ``regions`` x ``regions`` grid -> unit region vectors (M, K, proj_dim): the head's unit
        pixel vectors averaged over each region. The head runs on the chosen regions only."""
        features = self.encoder(views.unsqueeze(2))[:, :, 0]  # (M, F, H, W)
        m, f, h, w = features.shape
        r, k = self.regions, chosen.shape[1]
        tiles = features.reshape(m, f, r, h // r, r, w // r).permute(0, 2, 4, 1, 3, 5)
        tiles = tiles.reshape(m, r * r, f, h // r, w // r)  # (M, R*R, F, h/R, w/R)
        index = chosen.view(m, k, 1, 1, 1).expand(-1, -1, *tiles.shape[2:])
        picked = tiles.gather(1, index).flatten(0, 1)  # (M*K, F, h/R, w/R)
        z = F.normalize(self.head(picked), dim=1).mean((2, 3))  # (M*K, D)
        return F.normalize(z, dim=1).view(m, k, -1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        clips = batch["clip"]  # (B, 1, T, H, W)
        b, c, t, h, w = clips.shape
        if h % self.regions or w % self.regions:
            raise ValueError(
                f"regions={self.regions} does not divide the image size {h} x {w}: choose a "
                "grid side that divides both"
            )
        images = clips.transpose(1, 2).reshape(b * t, c, h, w)  # every frame an image
        n = images.shape[0]
        seed = int(torch.randint(2**62, (1,)))  # from the system's per-micro-batch seed
        generator = torch.Generator().manual_seed(seed)
        placed, view1, view2 = self.views(images, generator)
        chosen = self.sample_regions(placed, generator)  # (N, K), the same in both views
        z = self.embed(torch.cat([view1, view2]), chosen.repeat(2, 1))  # (2N, K, D)
        loss, accuracy = local_infonce(z[:n], z[n:], self.temperature)
        return {"loss": loss, "local_acc": accuracy.detach()}
