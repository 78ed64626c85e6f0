"""A training checkpoint, whatever wrote it: a Lightning file or a DeepSpeed ZeRO-2/3 folder,
read into one state dict and its metadata. Nothing is unpickled beyond plain containers and
tensors: Lightning files are read with ``weights_only=True``; DeepSpeed's own ZeRO
reconstruction runs with torch.load forced to ``weights_only=True`` and only DeepSpeed's
bookkeeping classes allowlisted."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from foundation.checkpoint import cut_file, read_checkpoint


@dataclass
class TrainingCheckpoint:
    """Weights and the rest of a training checkpoint, whatever wrote it."""

    path: Path
    kind: str  # "Lightning checkpoint" or "DeepSpeed ZeRO-<stage> checkpoint"
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)  # hyper_parameters, global_step, ...


# --- reading checkpoints -----------------------------------------------------------------------


def read_training_checkpoint(path: Path) -> TrainingCheckpoint:
    """A Lightning .ckpt file, or a DeepSpeed ZeRO folder (Lightning's `xxx.ckpt/` directory,
    or its tag folder holding `*_model_states.pt`), as fp32 weights + metadata."""
    path = Path(path)
    if path.is_dir():
        return _read_zero_folder(path)
    ckpt = read_checkpoint(path)  # weights_only=True; errors name the file
    if "state_dict" not in ckpt:
        raise ValueError(f"{path}: no 'state_dict'; is this a Lightning checkpoint?")
    state = ckpt.pop("state_dict")
    ckpt.pop("optimizer_states", None)
    return TrainingCheckpoint(path, "Lightning checkpoint", state, ckpt)


def zero_tag_folder(path: Path) -> tuple[Path, str]:
    """(DeepSpeed checkpoint dir, tag) of a Lightning ZeRO folder or of its tag folder."""
    if any(path.glob("*_model_states.pt")):
        return path.parent, path.name
    latest = path / "latest"
    if latest.is_file():
        return path, latest.read_text().strip()
    tags = [d for d in sorted(path.iterdir()) if d.is_dir() and any(d.glob("*_model_states.pt"))]
    if len(tags) == 1:
        return path, tags[0].name
    raise FileNotFoundError(
        f"{path}: a folder, but not a DeepSpeed checkpoint (no 'latest' file and "
        f"{len(tags)} tag folders with *_model_states.pt)"
    )


def damaged_checkpoint(path: Path) -> bool:
    """A checkpoint file cut short or damaged (:func:`foundation.checkpoint.cut_file`), or a
    DeepSpeed checkpoint folder with such a ``*.pt`` part in its tag folder."""
    path = Path(path)
    if not path.is_dir():
        return cut_file(path)
    try:
        ds_dir, tag = zero_tag_folder(path)
    except (FileNotFoundError, OSError):  # no DeepSpeed folder: reading it will say so
        return False
    return any(cut_file(part) for part in (ds_dir / tag).glob("*.pt"))


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every torch.load inside (DeepSpeed's zero_to_fp32 asks for weights_only=False) to
    weights_only=True, allowlisting only the plain bookkeeping classes DeepSpeed pickles."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        allow = [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
        with torch.serialization.safe_globals(allow):
            yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def _read_zero_folder(path: Path) -> TrainingCheckpoint:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ds_dir, tag = zero_tag_folder(path)
    tag_dir = ds_dir / tag
    # Lightning keeps its own state (hyper_parameters, global_step) in rank 0's model states.
    client_file = next(
        (tag_dir / n for n in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt") if (tag_dir / n).is_file()),
        None,
    )  # fmt: skip
    if client_file is None:
        raise FileNotFoundError(f"{tag_dir}: no rank-0 model states file (mp_rank_00_...)")
    meta = read_checkpoint(client_file)
    stage = meta.get("ds_config", {}).get("zero_optimization", {}).get("stage", "?")
    for key in ("module", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params"):
        meta.pop(key, None)  # DeepSpeed's partition bookkeeping, not the model's metadata
    try:
        # DeepSpeed prints progress on stdout; keep stdout for cmrfm's own summary.
        with _weights_only_loads(), contextlib.redirect_stdout(sys.stderr):
            state = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=tag)
    except Exception as err:
        raise ValueError(
            f"{tag_dir}: cannot rebuild fp32 weights from the ZeRO shards ({type(err).__name__}: "
            f"{err})"
        ) from err
    return TrainingCheckpoint(path, f"DeepSpeed ZeRO-{stage} checkpoint", dict(state), meta)
