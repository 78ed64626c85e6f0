"""LightningCLI entry for `cmrfm pretrain` and `cmrfm finetune`: YAML maps onto constructors."""

from __future__ import annotations

import linecache
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from cmrfm.config_keys import check_argv_keys, check_config_keys
from foundation.progress import log_file_progress, use_stream_bar
from foundation.released import NO_WEIGHTS
from foundation.training_checkpoint import damaged_checkpoint, zero_tag_folder

# Short flags users expect, rewritten to the LightningCLI keys they stand for.
ALIASES = {
    "--shards": ["--data.init_args.shards"],
    "--labels": ["--data.init_args.labels"],
    "--seed": ["--data.init_args.seed", "--seed_everything"],
    "--pretrained": ["--model.init_args.pretrained"],
    "--max-steps": ["--trainer.max_steps"],
    "--out": ["--trainer.default_root_dir"],
}


class ShortcutError(Exception):
    """A shortcut flag (``--shards``, ``--out``, ``--resume``, ...) given without its value."""


def expand_aliases(argv: Sequence[str], aliases: dict[str, list[str]]) -> list[str]:
    """Rewrite `--labels 4` / `--labels=4` into the LightningCLI keys it stands for."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        flag, eq, value = arg.partition("=")
        if flag in aliases:
            value = value if eq else next(it, None)
            if value is None:
                raise ShortcutError(f"{flag} needs a value")
            if flag == "--pretrained" and value == NO_WEIGHTS:
                value = "null"  # `--pretrained none`: from scratch, whatever the config names
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
                raise ShortcutError(f"{flag} needs a value")
        else:
            rest.append(arg)
    return rest, value


class ResumeError(Exception):
    """``--resume`` or ``--extend-to`` cannot be honoured; the message names the paths and the fix."""


class BuildError(Exception):
    """Building or setting up the config's model or data failed, before any training, with one
    of our own errors (weights that cannot be read or do not fit, more labels asked than the
    shards hold): its message, which names the file or setting, without the wrapping of it."""


class _TrainingStarted(L.Callback):
    """Whether fit got past setting up the data and model (and restoring a checkpoint): an error
    before that is a setting to fix (one line); one after it keeps its traceback."""

    started = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True


OUR_PACKAGES = ("cmrfm", "cmrfm_io", "data_shards", "foundation", "finetune", "pretext")


def our_error(error: BaseException) -> BaseException | None:
    """The first ValueError or FileNotFoundError that a ``raise`` statement of our packages
    raised, following explicit causes only (jsonargparse raises its wrapper ``from`` it): a bug
    such as a failed unpacking, or an error met while handling one of ours, is not it."""
    seen: set[int] = set()
    err: BaseException | None = error
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ValueError | FileNotFoundError) and _raised_by_us(err):
            return err
        err = err.__cause__
    return None


def _raised_by_us(error: BaseException) -> bool:
    """Whether the innermost frame of error's traceback is a ``raise`` in one of our packages."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    line = linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).strip()
    return module.split(".")[0] in OUR_PACKAGES and line.startswith("raise ")


def _logs_follow_out(argv: Sequence[str]) -> list[str]:
    """With ``--out DIR``, the config's logger (one ``class_path`` logger: CSV, TensorBoard,
    wandb) writes under DIR too, so one folder holds the run's checkpoints and logs; a
    command line that sets ``--trainer.logger...`` itself is left as it is."""
    argv = list(argv)
    _, out = pop_flag(argv, "--out")
    configs = [Path(c) for c in flag_values(argv, ("--config",)) if Path(c).is_file()]
    if out is None or any(a.startswith("--trainer.logger") for a in argv):  # the user's choice
        return argv
    loggers = [((yaml.safe_load(c.read_text()) or {}).get("trainer") or {}).get("logger")
               for c in configs]  # fmt: skip
    named = [lg for lg in loggers if lg is not None]
    logger = named[-1] if named else None  # the last config that names one wins, as in the merge
    if not (isinstance(logger, dict) and "class_path" in logger):
        return argv
    # after --out and after the config (which must name the logger's class first)
    ends = [i + (1 if "=" in a else 2) for i, a in enumerate(argv)
            if a.partition("=")[0] in ("--out", "--config", "-c")]  # fmt: skip
    at = max(ends)
    return [*argv[:at], "--trainer.logger.init_args.save_dir", out, *argv[at:]]


def flag_values(argv: Sequence[str], flags: Sequence[str]) -> list[str]:
    """The values of every ``FLAG VALUE`` / ``FLAG=VALUE`` in argv whose FLAG is in flags, in
    order (a flag at the very end, without its value, gives none)."""
    values = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in flags and (eq or i + 1 < len(argv)):
            values.append(value if eq else argv[i + 1])
    return values


def run_training(argv: Sequence[str], aliases: dict[str, list[str]] | None = None) -> Path:
    """Fit the model and data named by the config; returns the last checkpoint's path.

    ``--resume CKPT`` continues a run from a checkpoint file (a DeepSpeed run: a checkpoint
    folder), restoring weights, optimiser, schedule, step count and the data stream's position:
    with the config's ``max_steps`` unchanged, the result equals the uninterrupted run's.
    ``--resume last`` takes the newest checkpoint of this run (see :func:`newest_checkpoint`),
    or raises :class:`ResumeError` naming the folders searched when there is none.

    ``--extend-to N`` is ``--resume last`` (or the ``--resume`` given) with ``max_steps = N``,
    for a run that finished (or was stopped) at step k < N. The warmup + cosine schedule is
    sized by ``max_steps`` and rebuilt on resume, so from step k + 1 on the learning rate is that
    of a run planned for N steps, taken at its step: after a finished run (whose lr had decayed
    to its floor) it jumps back up at the join, with no new warmup. Steps up to k followed the
    shorter schedule, so the result is not the run that was planned N steps long.
    """
    os.environ.setdefault("WANDB_MODE", "offline")  # never phone home unless the user asks
    for config in flag_values(argv, ("--config", "-c")):  # typos, named before any work
        if Path(config).is_file():
            check_config_keys(Path(config))
    argv = _logs_follow_out(argv)
    argv, resume = pop_flag(argv, "--resume")
    argv, extend = pop_flag(argv, "--extend-to")
    extend_to = None if extend is None else _steps(extend)
    if extend_to is not None:  # after the user's own --max-steps, so it wins
        argv, resume = [*argv, "--trainer.max_steps", str(extend_to)], resume or "last"
    args = expand_aliases(argv, ALIASES if aliases is None else aliases)
    configs = [Path(c) for c in flag_values(args, ("--config", "-c")) if Path(c).is_file()]
    check_argv_keys(args, configs)  # command-line typos too, before LightningCLI's usage dump
    # `cmrfm demo` calls this in-process; LightningCLI would warn that sys.argv differs from args.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        cli = LightningCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            run=False,
            args=args,
            save_config_kwargs={"overwrite": True},
        )
    except Exception as error:  # jsonargparse wraps what building the model raised
        ours = our_error(error)
        if ours is None:
            raise
        raise BuildError(str(ours)) from error
    cli.trainer.callbacks.extend(log_file_progress())
    use_stream_bar(cli.trainer)
    ckpt = None if resume is None else resume_checkpoint(cli.trainer, resume, extend_to)
    started = _TrainingStarted()
    cli.trainer.callbacks.insert(0, started)
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    except Exception as error:  # before training: data or model setup refused, e.g. --labels
        ours = None if started.started else our_error(error)
        if ours is None:
            raise
        raise BuildError(str(ours)) from error
    _finish_wandb()
    root = Path(cli.trainer.default_root_dir)
    last = root / "last.ckpt"
    if isinstance(cli.trainer.strategy, DeepSpeedStrategy):
        return save_deepspeed(cli.trainer, root, last)
    cli.trainer.save_checkpoint(last, weights_only=False)  # full state, so a run can resume
    return last


def _steps(text: str) -> int:
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise ResumeError(f"--extend-to needs a number of optimizer steps, got {text!r}")
    return steps


def resume_checkpoint(trainer: L.Trainer, resume: str, extend_to: int | None = None) -> str:
    """The checkpoint ``--resume`` names (``last``: :func:`newest_checkpoint`), checked to exist
    and logged with its step, before any training. ``extend_to``: the run must be short of it."""
    flag = "--resume" if extend_to is None else "--extend-to"
    asked = f"--resume {resume}" if extend_to is None else f"--extend-to {extend_to}"
    if resume == "last":
        path, step = newest_checkpoint(trainer, asked, flag)
    else:
        path = Path(resume)
        if not path.exists():
            raise ResumeError(
                f"{asked}: {path} does not exist; give a checkpoint file (a DeepSpeed run: its "
                f"checkpoint folder), `--resume last` for this run's newest, or leave out {flag} "
                "to start a new run"
            )
        if damaged_checkpoint(path):
            raise ResumeError(
                f"{asked}: {path} is not a complete checkpoint (no zip archive: truncated or "
                "damaged); give another, or `--resume last` for this run's newest complete one"
            )
        step = stored_step(path)
    rank_zero_info(f"{asked}: resuming from {path} (step {'unknown' if step is None else step})")
    max_steps = trainer.max_steps
    if step is not None and 0 <= max_steps <= step:
        if extend_to is not None:
            raise ResumeError(f"{asked}: {path} is already at step {step}; give more steps")
        rank_zero_warn(
            f"{path} is at step {step} and trainer.max_steps is {max_steps}: nothing left to "
            "train; --extend-to N trains on to step N (see `cmrfm pretrain` in the README)"
        )
    return str(path)


def checkpoint_places(trainer: L.Trainer) -> list[tuple[Path, str]]:
    """(folder, glob pattern) of every checkpoint this run could resume from: what its
    ModelCheckpoint callbacks write (their ``dirpath``, else ``checkpoints/`` of every logger
    version, since each restart logs to a new one, else ``default_root_dir/checkpoints``) and
    the final ``last.ckpt`` (DeepSpeed: ``last-zero``) run_training writes into
    ``default_root_dir``."""
    root = Path(trainer.default_root_dir)
    final = "last-zero" if isinstance(trainer.strategy, DeepSpeedStrategy) else "last.ckpt"
    places = [(root, final), (root, "checkpoints/*.ckpt")]
    if trainer.loggers:  # where ModelCheckpoint puts them by default (Lightning's own rule)
        logger = trainer.loggers[0]
        places.append((Path(logger.save_dir or root) / str(logger.name), "*/checkpoints/*.ckpt"))
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
            places.append((Path(callback.dirpath), "*.ckpt"))
    return list(dict.fromkeys(places))


def newest_checkpoint(
    trainer: L.Trainer, asked: str = "--resume last", flag: str = "--resume"
) -> tuple[Path, int | None]:
    """This run's newest checkpoint and its step: the highest global step stored in one (ties
    and unreadable ones: the latest modified). DeepSpeed checkpoints are folders, the others
    files. Raises :class:`ResumeError` naming the places searched when there is none."""
    deepspeed = isinstance(trainer.strategy, DeepSpeedStrategy)
    places = checkpoint_places(trainer)
    root = Path(trainer.default_root_dir)
    found = [
        path
        for folder, pattern in places
        for path in folder.glob(pattern)
        if (path.is_dir() if deepspeed else path.is_file()) and _same_run(path, root)
    ]
    if not found:
        kind = "DeepSpeed checkpoint folder" if deepspeed else "checkpoint"
        where = ", ".join(str(folder / pattern) for folder, pattern in places)
        raise ResumeError(
            f"{asked}: no {kind} of this run in {where}; leave out {flag} to start a new run, "
            "or give --resume PATH"
        )
    damaged = [path for path in found if damaged_checkpoint(path)]
    for path in damaged:  # a copy cut short: resuming from it would fail at the first read
        rank_zero_warn(f"{path}: not a complete checkpoint (no zip archive: truncated or "
                       "damaged); skipped by --resume last")  # fmt: skip
    found = [path for path in found if path not in damaged]
    if not found:
        raise ResumeError(
            f"{asked}: every checkpoint of this run is damaged ({', '.join(map(str, damaged))}); "
            "give --resume PATH of a complete one, or leave out --resume to start a new run"
        )
    steps = {path: stored_step(path) for path in found}
    return max(
        steps.items(), key=lambda item: (-1 if item[1] is None else item[1], _mtime(item[0]))
    )


def _same_run(checkpoint: Path, root: Path) -> bool:
    """Whether a checkpoint in a logger's ``version_N/checkpoints/`` came from a run with this
    ``default_root_dir``: configs fix the log folder, so runs with another ``--out`` share it.
    LightningCLI saved each run's config next to its ``checkpoints/``; without one, it counts."""
    config = checkpoint.parent.parent / "config.yaml"
    if checkpoint.parent.name != "checkpoints" or not config.is_file():
        return True
    try:
        saved = yaml.safe_load(config.read_text())["trainer"]["default_root_dir"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return True
    return Path(saved or os.getcwd()).resolve() == root.resolve()


def stored_step(path: Path) -> int | None:
    """The global step saved in a checkpoint file or DeepSpeed folder (its ``step=N`` name when
    the file cannot be read); None when neither tells."""
    source = path
    if path.is_dir():  # DeepSpeed: <folder>/<tag>/*model_states.pt hold the step
        try:
            ds_dir, tag = zero_tag_folder(path)
            source = next(iter(sorted((ds_dir / tag).glob("*model_states.pt"))), path)
        except OSError:  # not a DeepSpeed folder: only its name can tell
            pass
    try:
        # mmap: the tensors are not read, so this stays cheap for a ViT-L checkpoint
        state = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        return int(state["global_step"])
    except Exception:  # unreadable, not a checkpoint, no step: fall back on the name
        match = re.search(r"step=(\d+)", path.name)
        return int(match[1]) if match else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


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
