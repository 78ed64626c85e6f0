"""`cmrfm`: the command line (shard, inspect, pretrain, finetune, evaluate, predict, demo, bench)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cmrfm import CONFIGS, __version__
from cmrfm.cli.bench import add_bench
from cmrfm.cli.chatter import quiet_third_party
from cmrfm.cli.data import add_inspect, add_shard
from cmrfm.cli.errors import USER_ERRORS, UsageError, fail
from cmrfm.cli.hub import add_export, add_publish
from cmrfm.cli.predict import add_predict
from cmrfm.cli.train import (
    TRAINING,
    add_demo,
    add_evaluate,
    add_fewshot,
    add_probe,
    add_training,
    training_shortcuts,
)
from cmrfm.shipped import config_args

# Imported from here by tests and scripts: `from cmrfm.cli import main, fail, UsageError, ...`.
__all__ = [
    "TRAINING",
    "USER_ERRORS",
    "UsageError",
    "build_parser",
    "fail",
    "main",
    "training_shortcuts",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmrfm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cmrfm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_shard(sub)
    add_training(sub)
    add_evaluate(sub)
    add_fewshot(sub)
    add_demo(sub)
    add_inspect(sub)
    add_probe(sub)
    add_bench(sub)
    add_export(sub)
    add_predict(sub)
    add_publish(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_third_party()
    if argv and argv[0] in TRAINING:
        from cmrfm.config_keys import ConfigError
        from cmrfm.train import BuildError, ResumeError, ShortcutError, run_training

        rest = argv[1:]
        if "--help" in rest or "-h" in rest:  # ours first, at once; then Lightning's (slow)
            print(training_shortcuts(argv[0]), flush=True)
        if (
            not any(a == "--config" or a.startswith("--config=") for a in rest)
            and "--help" not in rest
        ):
            rest = ["--config", str(CONFIGS / TRAINING[argv[0]][0]), *rest]
        try:
            path = run_training(config_args(rest))  # --config NAME: a shipped one too
        except (
            BuildError,
            ConfigError,
            ResumeError,
            ShortcutError,
            *USER_ERRORS,
        ) as error:  # no checkpoint to resume, no shard folder:
            # the user's to fix, one line (CMRFM_DEBUG=1 shows the traceback)
            if os.environ.get("CMRFM_DEBUG"):
                raise
            fail(argv[0], error)
        print(f"checkpoint: {path}")
        return
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as error:
        # A missing folder or a refused overwrite is the user's to fix: one line, not a traceback
        # (CMRFM_DEBUG=1 shows it).
        if os.environ.get("CMRFM_DEBUG"):
            raise
        fail(" ".join(filter(None, (args.command, getattr(args, "benchmark", None)))), error)
