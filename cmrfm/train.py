"""LightningCLI entry for `cmrfm pretrain` and `cmrfm finetune`: YAML maps onto constructors."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

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


def run_training(argv: Sequence[str], aliases: dict[str, list[str]] | None = None) -> Path:
    """Fit the model and data named by the config; returns the last checkpoint's path."""
    os.environ.setdefault("WANDB_MODE", "offline")  # never phone home unless the user asks
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
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    root = Path(cli.trainer.default_root_dir)
    last = root / "last.ckpt"
    cli.trainer.save_checkpoint(last, weights_only=False)  # full state, so a run can resume
    return last
