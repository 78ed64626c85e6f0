"""Online segmentation probe: while pretraining runs, fit a linear head on the frozen backbone's
features of a few labelled subjects and score Dice on held-out ones (the online linear evaluation
of solo-learn and lightly), so a user sees mid-run whether pretraining is learning.

The probe is cheap by design: the backbone runs once per probe over every probe clip (no
gradient), the head trains on those cached features for a fixed number of steps, and nothing
depends on wall time, so a probe's score is a function of the weights alone (and the seed).
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F

from cmrfm_io.files import write_atomic
from data_shards.clips import cyclic_window
from data_shards.record import IGNORE
from data_shards.stream import load_subjects, shard_urls
from finetune.data import draw_labelled
from finetune.metrics import dice_per_class
from foundation.unet import CardiacUNet

PROBE_CSV = "probe.csv"
PROBE_PLOT = "probe.png"


def probe_clips(
    subjects: Sequence[dict], frames: int
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """Clips that start at each labelled frame of each slice: x float (N, 1, frames, H, W) in
    [0, 1], y long (N, H, W) the label of the clip's first frame, and (subject, frame) per clip."""
    xs, ys, where = [], [], []
    for i, subject in enumerate(subjects):
        image, label = subject["image"], subject["label"]  # (S, T, H, W) uint8
        n_frames = image.shape[1]
        labelled = [f for f in range(n_frames) if (label[:, f] != IGNORE).any()]
        for f in labelled:
            window = cyclic_window(f, frames, n_frames)
            xs.append(image[:, window])  # (S, frames, H, W)
            ys.append(label[:, f])  # (S, H, W)
            where += [(i, f)] * image.shape[0]
    if not xs:
        raise ValueError("the probe's subjects hold no labelled frame")
    x = torch.from_numpy(np.concatenate(xs)).float().div_(255)[:, None]
    y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
    return x, y, where


class LinearSegHead(nn.Module):
    """Per-token linear classifier on standardised features (B, C, h, w) -> logits (B, K, H, W),
    upsampled bilinearly: the segmentation analogue of a linear probe."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)  # as MAE's linear probe
        self.linear = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = self.linear(self.norm(features))  # (B, K, h, w)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SegProbe(Callback):
    """Every ``every_n_steps`` optimiser steps (and at step 0 and at the end), fit a
    :class:`LinearSegHead` on the frozen backbone and score mean Dice on ``eval_split``.

    Scores go to every logger (``probe/dice_mean``, ``probe/dice_<class>``), to
    ``<out>/probe.csv`` and to a plot ``<out>/probe.png``. The history travels in checkpoints,
    so a resumed run keeps its curve.

    Args:
        shards: labelled shards with the pretraining's image size (e.g. runs/real/acdc).
        labels: labelled train subjects to fit on, drawn by ``seed`` as the few-shot benchmark
            draws them (stratified by diagnosis group).
        every_n_steps: probe interval in optimiser steps.
        steps: head optimisation steps per probe (Adam, batches of ``batch_size`` clips).
        lr: the head's learning rate.
        taps: how many backbone blocks feed the head (evenly spread, the last included); their
            normed tokens are concatenated.
        eval_split: subjects scored (never the test split: this guides a run, it is no result).
        max_eval_subjects: score only the first this many (sorted by key); None for all.
        tap: a dense backbone's (CardiacUNet) map the head reads: the bottom block's "output"
            or its "input" (the deepest encoder level). None: the map the pretraining objective
            trains (its ``tap``), else "output". ViTs ignore it.
        out: folder for probe.csv and probe.png; None = the trainer's ``default_root_dir``.
        seed: the draw and the head's initialisation and batches.
    """

    def __init__(
        self,
        shards: str,
        labels: int = 5,
        every_n_steps: int = 500,
        steps: int = 300,
        lr: float = 3e-3,
        batch_size: int = 32,
        taps: int = 4,
        train_split: str = "train",
        eval_split: str = "val",
        max_eval_subjects: int | None = None,
        out: str | None = None,
        seed: int = 0,
        tap: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("labels", labels), ("every_n_steps", every_n_steps),
                            ("steps", steps), ("batch_size", batch_size), ("taps", taps)):  # fmt: skip
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if eval_split == "test":
            raise ValueError("eval_split='test': the probe steers a run; score it on val")
        self.shards, self.labels, self.every_n_steps = shards, labels, every_n_steps
        self.steps, self.lr, self.batch_size, self.taps = steps, lr, batch_size, taps
        self.train_split, self.eval_split = train_split, eval_split
        self.max_eval_subjects, self.out, self.seed = max_eval_subjects, out, seed
        self.tap = tap
        self.history: list[dict[str, float]] = []
        self._train: list[dict] | None = None
        self._eval: list[dict] | None = None

    # --- data ---------------------------------------------------------------------------------

    def _load(self) -> None:
        if self._train is not None:
            return
        urls = shard_urls(self.shards)
        train = load_subjects(urls, splits=[self.train_split])
        self._train = draw_labelled(train, self.labels, self.seed, str(self.shards))
        held = [s for s in load_subjects(urls, splits=[self.eval_split]) if s["label"] is not None]
        if not held:
            raise ValueError(f"{self.shards}: no labelled subject in split {self.eval_split!r}")
        self._eval = held[: self.max_eval_subjects]

    @property
    def subjects(self) -> tuple[list[str], list[str]]:
        """Keys of the subjects the head is fitted on and those it is scored on."""
        self._load()
        return [s["key"] for s in self._train], [s["key"] for s in self._eval]

    # --- the probe ----------------------------------------------------------------------------

    @torch.no_grad()
    def _features(
        self, encoder: nn.Module, x: torch.Tensor, device: torch.device, tap: str
    ) -> torch.Tensor:
        """Clips (N, 1, T, H, W) -> the tapped blocks' tokens of the first time slot as maps
        (N, taps * D, h, w); a dense backbone's (CardiacUNet) deep map ``tap`` of the first
        frame (N, C, H/r, W/r), the same grid as a patch-16 ViT's at r = 16."""
        if isinstance(encoder, CardiacUNet):
            deep = [
                encoder.forward_features(b.to(device), bottleneck=True, tap=tap)[1][:, 0]
                for b in x.split(64)
            ]
            return torch.cat(deep).float().cpu()
        taps = encoder.default_taps(min(self.taps, encoder.depth))
        out = []
        for batch in x.split(64):
            _, h, w = encoder.grid(batch.shape)
            feats = encoder.forward_intermediates(batch.to(device), taps, norm=True)
            first = [f[:, : h * w].transpose(1, 2) for f in feats]  # each (B, D, h*w)
            out.append(torch.cat(first, 1).reshape(batch.shape[0], -1, h, w).float().cpu())
        return torch.cat(out)

    def score(
        self,
        encoder: nn.Module,
        device: torch.device | str = "cpu",
        objective_tap: str | None = None,
    ) -> dict[str, float]:
        """Fit the head on the frozen encoder and return Dice on the held-out subjects
        (``dice_mean`` over subjects and their labelled frames, and per class).
        objective_tap: the map the pretraining trained, read when ``tap`` is None."""
        self._load()
        tap = self.tap or objective_tap or "output"
        frames = getattr(encoder, "tubelet", 1)  # a dense backbone sees frames one by one
        x, y, _ = probe_clips(self._train, frames)
        x_eval, y_eval, where = probe_clips(self._eval, frames)
        was_training = encoder.training
        encoder.eval()
        try:
            train_feats = self._features(encoder, x, torch.device(device), tap)
            eval_feats = self._features(encoder, x_eval, torch.device(device), tap)
        finally:
            encoder.train(was_training)
        num_classes = int(max(y[y != IGNORE].max(), y_eval[y_eval != IGNORE].max())) + 1
        with torch.random.fork_rng(), torch.enable_grad():
            torch.manual_seed(self.seed)
            head = self._fit(train_feats, y, num_classes)
        head.eval()
        with torch.no_grad():
            size = tuple(y_eval.shape[-2:])
            pred = torch.cat([head(f, size).argmax(1) for f in eval_feats.split(64)])  # (N, H, W)
        return self._dice(pred.numpy(), y_eval.numpy(), where, num_classes)

    def _fit(self, feats: torch.Tensor, y: torch.Tensor, num_classes: int) -> LinearSegHead:
        head = LinearSegHead(feats.shape[1], num_classes)
        optimizer = torch.optim.Adam(head.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        # The loss is taken on a grid 4x finer than the tokens' (nearest label maps), not at full
        # resolution: upsampling's backward would cost ~10x the rest of the probe on a CPU.
        step = max(1, y.shape[-1] // (4 * feats.shape[-1]))
        y = y[:, ::step, ::step]
        for _ in range(self.steps):
            idx = torch.randint(
                len(feats), (min(self.batch_size, len(feats)),), generator=generator
            )
            logits = head(feats[idx], tuple(y.shape[-2:]))
            loss = F.cross_entropy(logits, y[idx], ignore_index=IGNORE)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return head

    @staticmethod
    def _dice(
        pred: np.ndarray, truth: np.ndarray, where: list[tuple[int, int]], num_classes: int
    ) -> dict[str, float]:
        """Dice per (subject, frame) volume, then the mean over volumes, per class and overall."""
        volumes: dict[tuple[int, int], list[int]] = {}
        for row, key in enumerate(where):
            volumes.setdefault(key, []).append(row)
        per_class: dict[str, list[float]] = {}
        for rows in volumes.values():
            for name, value in dice_per_class(pred[rows], truth[rows], num_classes).items():
                per_class.setdefault(name, []).append(value)
        scores = {f"dice_{k}": float(np.nanmean(v)) for k, v in per_class.items()}
        scores["dice_mean"] = float(np.nanmean(list(scores.values())))
        return scores

    # --- Lightning hooks -----------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._load()  # missing or unlabelled shards stop the run here, before any training

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # step 0 of a fresh run (the random initialisation), or a resume at a probe step whose
        # probe the killed run had not written; a resume between probe steps adds no point
        if trainer.global_step % self.every_n_steps == 0:
            self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any):
        if trainer.global_step % self.every_n_steps == 0:
            self._probe(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probe(trainer, pl_module)

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = int(trainer.global_step)
        if any(row["step"] == step for row in self.history):
            return  # already probed (several micro-batches per step, or a resume)
        start = time.perf_counter()
        # Every rank runs it (ZeRO-3 gathers weights collectively); rank 0 writes.
        tap = getattr(getattr(pl_module, "objective", None), "tap", None)
        scores = self.score(pl_module.encoder, pl_module.device, tap)
        row = {"step": step, **scores, "probe_s": round(time.perf_counter() - start, 2)}
        self.history.append(row)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"probe/{k}": v for k, v in scores.items()}, step=step)
            folder = Path(self.out or trainer.default_root_dir)
            write_history(self.history, folder / PROBE_CSV)
            plot_history(self.history, folder / PROBE_PLOT)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def write_history(rows: Sequence[dict[str, float]], path: Path) -> None:
    """The probe rows as CSV (written whole each time, so a resumed run's file matches its
    checkpoint's history)."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def read_history(path: Path) -> list[dict[str, float]]:
    """probe.csv -> rows of floats (step as int)."""
    with path.open() as f:
        return [
            {k: int(v) if k == "step" else float(v) for k, v in row.items() if v != ""}
            for row in csv.DictReader(f)
        ]


def plot_history(rows: Sequence[dict[str, float]], path: Path) -> None:
    """Probe Dice against pretraining step: the mean, and each class thinner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    names = [k for k in rows[0] if k.startswith("dice_") and k != "dice_mean"]
    for name in names:
        label = name.removeprefix("dice_")
        ax.plot(steps, [row.get(name, math.nan) for row in rows], lw=1, alpha=0.6, label=label)
    ax.plot(steps, [row["dice_mean"] for row in rows], "k-o", ms=3, lw=2, label="mean")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("probe Dice (val)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=len(names) + 1, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def probe_checkpoints(
    checkpoints: Sequence[Path], probe: SegProbe, out: Path, random_init: bool = True
) -> tuple[list[dict[str, float]], list[str]]:
    """The probe of saved pretraining checkpoints, for a run that had none (or to compare probe
    settings): one row per checkpoint at its global step, and with ``random_init`` a step-0 row
    for the same backbone freshly initialised (seeded by the probe's seed). Rows are sorted by
    step and written to ``out/probe.csv`` and ``out/probe.png`` after each one. A checkpoint that
    cannot be read or built is skipped, named with the problem on stderr, and the rest go on.
    Returns (rows, the skipped checkpoints' messages)."""
    from foundation.registry import create_backbone

    rows: list[dict[str, float]] = []
    skipped: list[str] = []
    first: tuple[str, dict[str, Any], str | None] | None = None
    for path in checkpoints:
        try:
            encoder, step, spec = _saved_backbone(Path(path))
        except (ValueError, KeyError, RuntimeError, OSError) as error:
            said = str(error) if str(error).startswith(str(path)) else f"{path}: {error}"
            skipped.append(said)
            print(f"skipped {said}", file=sys.stderr, flush=True)
            continue
        first = first or spec
        rows.append(_probe_row(probe, encoder, step, Path(path).name, spec[2]))
        _write(rows, out)
    if random_init and first is not None:
        torch.manual_seed(probe.seed)
        encoder = create_backbone(first[0], **first[1])
        rows.append(_probe_row(probe, encoder, 0, "random init", first[2]))
        _write(rows, out)
    return sorted(rows, key=lambda row: row["step"]), skipped


def _saved_backbone(path: Path) -> tuple[nn.Module, int, tuple[str, dict[str, Any], str | None]]:
    """(backbone with a pretraining checkpoint's weights, its global step, (registered name,
    constructor kwargs, the objective's tap)); errors name the file."""
    from foundation.architecture import backbone_kind
    from foundation.checkpoint import recorded_backbone
    from foundation.registry import create_backbone
    from foundation.weights import read_backbone_weights

    if path.is_dir():
        raise ValueError(
            f"{path}: a folder; the probe takes pretraining checkpoint files (.ckpt), which record "
            "the step and the objective's tap (a hub folder records neither; convert a DeepSpeed "
            "folder with lightning.pytorch.utilities.deepspeed."
            "convert_zero_checkpoint_to_fp32_state_dict)"
        )
    weights = read_backbone_weights(path)
    hparams = read_checkpoint_meta(path)
    name, kwargs = recorded_backbone(hparams["hyper_parameters"], backbone_kind(weights.state))
    name = name or weights.architecture
    if name is None:
        raise ValueError(f"{path}: its hyper-parameters name no backbone")
    tap = (hparams["hyper_parameters"].get("objective_kwargs") or {}).get("tap")
    encoder = create_backbone(name, pretrained=weights, **kwargs)
    return encoder, hparams["global_step"], (name, kwargs, tap)


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's hyper_parameters and global_step, its tensors not read (mmap)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {
        "hyper_parameters": ckpt.get("hyper_parameters") or {},
        "global_step": int(ckpt.get("global_step", -1)),
    }


def _probe_row(
    probe: SegProbe, encoder: nn.Module, step: int, source: str, tap: str | None = None
) -> dict[str, Any]:
    start = time.perf_counter()
    scores = probe.score(encoder, objective_tap=tap)
    seconds = round(time.perf_counter() - start, 2)
    print(f"probe {source} (step {step}): mean Dice {scores['dice_mean']:.3f} in {seconds} s",
          flush=True)  # fmt: skip
    return {"step": step, **scores, "probe_s": seconds}


def _write(rows: list[dict[str, Any]], out: Path) -> None:
    ordered = sorted(rows, key=lambda row: row["step"])
    write_history(ordered, Path(out) / PROBE_CSV)
    plot_history(ordered, Path(out) / PROBE_PLOT)
