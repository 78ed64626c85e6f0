"""LightningCLI entry for `cmrfm pretrain` and `cmrfm finetune`: YAML maps onto constructors."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import DeepSpeedStrategy

# Short flags users expect, rewritten to the LightningCLI keys they stand for.
ALIASES = {
    "--shards": ["--data.init_args.shards"],
    "--labels": ["--data.init_args.labels"],
    "--seed": ["--data.init_args.seed", "--seed_everything"],
    "--pretrained": ["--model.init_args.pretrained"],
    "--max-steps": ["--trainer.max_steps"],
    "--out": ["--trainer.default_root_dir"],
}


def expand_aliases(argv: Sequence[str], aliases: dict[str, list[str]]) -> list[str]:
    """Rewrite `--labels 4` / `--labels=4` into the LightningCLI keys it stands for."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if flag in aliases:
            value = value if eq else next(it, None)
            if value is None:
                raise SystemExit(f"cmrfm: {flag} needs a value")
            for key in aliases[flag]:
                out += [key, value]
        else:
            out.append(arg)
    return out


def pop_flag(argv: Sequence[str], flag: str) -> tuple[list[str], str | None]:
    """Remove `flag VALUE` / `flag=VALUE` from argv; returns the rest and the value (or None)."""
    rest, value = [], None
    it = iter(argv)
    for arg in it:
        name, eq, given = arg.partition("=")
        if name == flag:
            value = given if eq else next(it, None)
            if value is None:
                raise SystemExit(f"cmrfm: {flag} needs a value")
        else:
            rest.append(arg)
    return rest, value


def run_training(argv: Sequence[str], aliases: dict[str, list[str]] | None = None) -> Path:
    """Fit the model and data named by the config; returns the last checkpoint's path.

    ``--resume CKPT`` continues a run from a checkpoint (``last``: the newest one the
    ModelCheckpoint callback wrote), restoring weights, optimiser, schedule, step count and the
    data stream's position.
    """
    os.environ.setdefault("WANDB_MODE", "offline")  # never phone home unless the user asks
    argv, resume = pop_flag(argv, "--resume")
    args = expand_aliases(argv, ALIASES if aliases is None else aliases)
    # `cmrfm demo` calls this in-process; LightningCLI would warn that sys.argv differs from args.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    cli = LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=args,
        save_config_kwargs={"overwrite": True},
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    _finish_wandb()
    root = Path(cli.trainer.default_root_dir)
    last = root / "last.ckpt"
    if isinstance(cli.trainer.strategy, DeepSpeedStrategy):
        return save_deepspeed(cli.trainer, root, last)
    cli.trainer.save_checkpoint(last, weights_only=False)  # full state, so a run can resume
    return last


def _finish_wandb() -> None:
    """Close the wandb run this fit opened: WandbLogger reuses a run still open in the process,
    so a second training in it (`cmrfm demo`: pretrain, then fine-tune) would log into the first."""
    wandb = sys.modules.get("wandb")  # never import it just to check
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def save_deepspeed(trainer: L.Trainer, root: Path, last: Path) -> Path:
    """ZeRO shards every rank's part into a folder (``last-zero/``, what a run resumes from);
    rank 0 then gathers the weights into one ordinary checkpoint file, ``last.ckpt``."""
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    sharded = root / "last-zero"
    trainer.save_checkpoint(sharded, weights_only=False)
    if trainer.is_global_zero:
        convert_zero_checkpoint_to_fp32_state_dict(sharded, last)
    trainer.strategy.barrier("consolidated checkpoint")
    return last
