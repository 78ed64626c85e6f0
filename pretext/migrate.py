"""One-off migration of checkpoints from the removed ``MAEPretrainer`` to :class:`PretrainSystem`.

``MAEPretrainer`` was :class:`pretext.system.PretrainSystem` with objective "mae" and flat
arguments (patch_size, tubelet, drop_path_rate for the backbone; mask_ratio, decoder_*,
norm_pix_loss, mask_type for the MAE), which its checkpoints record as flat hyper-parameters;
before the objective registry its state-dict keys began with ``mae.`` instead of ``objective.``.
:func:`migrate_checkpoint` rewrites such a Lightning checkpoint file so that it restores into
PretrainSystem (``foundation.checkpoint.restore``) and resumes with the pretrain_mae_*.yaml
configs (``cmrfm pretrain --config ... --resume NEW.ckpt``)::

    python -m pretext.migrate OLD.ckpt NEW.ckpt

Everything else in the checkpoint (optimizer and scheduler states, loops, callbacks, the data
module's state, ``pretrain_state``) is kept as it is: the modules and their parameter order are
the same. Fine-tuning and ``cmrfm export`` need the migrated file too: ``foundation.checkpoint``
refuses a backbone under ``mae.encoder.``, naming this command.
"""

from __future__ import annotations

import argparse
import inspect
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cmrfm_io.files import write_atomic
from foundation.checkpoint import LEGACY_PREFIX, has_legacy_keys, read_checkpoint
from pretext.system import PretrainSystem

LEGACY_CLASS = "pretext.system.MAEPretrainer"
SYSTEM_CLASS = "pretext.system.PretrainSystem"
PREFIX = "objective."
# MAEPretrainer's flat arguments, by where PretrainSystem takes them.
BACKBONE_ARGS = ("patch_size", "tubelet", "drop_path_rate")
OBJECTIVE_ARGS = (
    "mask_ratio", "decoder_dim", "decoder_depth", "decoder_heads", "norm_pix_loss", "mask_type"
)  # fmt: skip


def is_legacy(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a checkpoint dict was written by MAEPretrainer (class, flat arguments or keys)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    return (
        hparams.get("_class_path") == LEGACY_CLASS
        or any(k in hparams for k in BACKBONE_ARGS + OBJECTIVE_ARGS)
        or has_legacy_keys(checkpoint)
    )


def migrate_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """MAEPretrainer's flat hyper-parameters as PretrainSystem records them: backbone_kwargs and
    objective "mae" with objective_kwargs; PretrainSystem's other arguments at their defaults
    (what MAEPretrainer passed), LightningCLI's "_"-entries kept, ``_class_path`` renamed."""
    flat = dict(hparams)
    nested = {
        "backbone_kwargs": {k: flat.pop(k) for k in BACKBONE_ARGS if k in flat},
        "objective": "mae",
        "objective_kwargs": {k: flat.pop(k) for k in OBJECTIVE_ARGS if k in flat},
    }
    signature = inspect.signature(PretrainSystem).parameters
    unknown = sorted(k for k in flat if k[0] != "_" and k not in signature)
    if unknown:
        raise ValueError(f"hyper-parameters {unknown} are neither MAEPretrainer's nor "
                         "PretrainSystem's arguments; cannot migrate them")  # fmt: skip
    args = {name: p.default for name, p in signature.items()} | flat | nested
    bookkeeping = {k: v for k, v in flat.items() if k[0] == "_" and k != "_class_path"}
    head = {"_class_path": SYSTEM_CLASS} if "_class_path" in flat else {}
    return head | {name: args[name] for name in signature} | bookkeeping


def migrate_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """``mae.*`` keys renamed ``objective.*``, the order kept; other keys as they are."""
    renamed = {
        PREFIX + k[len(LEGACY_PREFIX) :] if k.startswith(LEGACY_PREFIX) else k: v
        for k, v in state.items()
    }
    if len(renamed) != len(state):
        raise ValueError(f"the state dict holds both {LEGACY_PREFIX}* and {PREFIX}* copies "
                         "of some tensors; cannot tell which to keep")  # fmt: skip
    return renamed


def migrate(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A MAEPretrainer checkpoint dict as PretrainSystem's (a new dict; tensors shared)."""
    if not is_legacy(checkpoint):
        raise ValueError("not a MAEPretrainer checkpoint (no MAEPretrainer class, flat MAE "
                         f"arguments or {LEGACY_PREFIX}* keys): nothing to migrate")  # fmt: skip
    out = dict(checkpoint)
    if "state_dict" in out:
        out["state_dict"] = migrate_state_dict(out["state_dict"])
    if out.get("hyper_parameters") is not None:
        out["hyper_parameters"] = migrate_hparams(out["hyper_parameters"])
    return out


def migrate_checkpoint(src: str | Path, dst: str | Path, overwrite: bool = False) -> Path:
    """Write the MAEPretrainer Lightning checkpoint src as a PretrainSystem one at dst.

    dst may be src with overwrite; it is written whole or not at all.
    """
    src, dst = Path(src), Path(dst)
    if src.is_dir():
        raise ValueError(f"{src}: a checkpoint folder (DeepSpeed); MAEPretrainer wrote files")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; choose another path or overwrite it")
    old = read_checkpoint(src)
    try:
        checkpoint = migrate(old)
    except ValueError as err:
        raise ValueError(f"{src}: {err}") from err
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_atomic(dst, buffer.getvalue())
    return dst


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pretext.migrate",
        description="Rewrite a MAEPretrainer checkpoint as a PretrainSystem one (once).",
    )
    parser.add_argument("src", type=Path, help="the old checkpoint (.ckpt)")
    parser.add_argument("dst", type=Path, help="where to write the migrated one")
    parser.add_argument("--overwrite", action="store_true", help="replace dst if it exists")
    args = parser.parse_args(argv)
    try:
        out = migrate_checkpoint(args.src, args.dst, overwrite=args.overwrite)
    except (OSError, ValueError) as err:
        parser.exit(1, f"error: {err}\n")
    print(f"{args.src} -> {out} (pretext.system.PretrainSystem)")


if __name__ == "__main__":
    main()
