"""The few-shot benchmark's settings: :class:`FewShotConfig` (the YAML keys of
``configs/fewshot_*.yaml``), the methods of each task and the metrics its summary reports."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from foundation.released import DEFAULT_RELEASE, NO_WEIGHTS, resolve_pretrained

TASKS = ("seg", "ef", "cls")

# Methods by name: constructor overrides for the task's system, and from_weights: whether the
# backbone starts from the weights in FewShotConfig.pretrained. "from_seg" and "radiomics" reuse
# the segmentation benchmark.
METHODS: dict[str, dict[str, dict[str, Any]]] = {
    "seg": {
        "pretrained": {"from_weights": True, "protocol": "full"},
        "scratch": {"from_weights": False, "protocol": "full"},
        "unet": {"from_weights": False, "arch": "unet"},
        "linear": {"from_weights": True, "protocol": "linear"},
        "partial": {"from_weights": True, "protocol": "partial"},
        "lora": {"from_weights": True, "protocol": "lora"},
    },
    "ef": {
        "pretrained": {"from_weights": True, "protocol": "full"},
        "scratch": {"from_weights": False, "protocol": "full"},
        "linear": {"from_weights": True, "protocol": "linear"},
        "lora": {"from_weights": True, "protocol": "lora"},
        "from_seg": {},
    },
    "cls": {
        "pretrained": {"from_weights": True, "protocol": "full"},
        "scratch": {"from_weights": False, "protocol": "full"},
        "linear": {"from_weights": True, "protocol": "linear"},
        "lora": {"from_weights": True, "protocol": "lora"},
        "radiomics": {},
    },
}
# Methods that score the segmentation method's (seg_method) label maps: read from seg_from, or
# that segmenter is trained here.
SEG_REUSE = ("from_seg", "radiomics")
DEFAULT_METHODS = {
    "seg": ["pretrained", "scratch", "unet"],
    "ef": ["pretrained", "scratch", "from_seg"],
    "cls": ["pretrained", "scratch", "radiomics"],
}
# The metrics the summary tables and plots report, headline first.
HEADLINES = {
    "seg": [
        *("dice_mean", "dice_lv", "dice_myo", "dice_rv", "dice_infarct", "dice_mvo"),
        *("hd95_mean", "lv_ef_mae", "lv_mass_mae", "infarct_pct_mae"),
    ],
    "ef": ["lv_ef_mae", "lv_ef_bias", "lv_ef_r"],
    "cls": ["accuracy", "macro_f1"],
}
# Settings a re-run must share with the results already in its folder.
SAME_RUN_KEYS = (
    "task", "shards", "train_split", "eval_split", "budget_s", "steps", "frames", "model",
    "method_args",
)  # fmt: skip


@dataclass
class FewShotConfig:
    """One benchmark: a task, label counts, seeds and methods; YAML keys are these fields.

    labels holds counts or "all" (every labelled subject of train_split); seeds = how many seeds
    (0 .. seeds-1); pretrained = the weights of the methods marked from_weights (a path or a
    released model's name; default foundation.released.DEFAULT_RELEASE); budget_s = training
    seconds per run, the same for every method; steps = optimiser steps per run instead (the same for every method: equal time for methods that share
    a network, whatever else the machine runs; `cmrfm bench seg` gives the step costs); model =
    constructor arguments shared by the methods (backbone, patch_size, tubelet, lr, ...);
    method_args = per-method overrides; seg_from = a segmentation benchmark's folder whose saved
    predictions "from_seg" and "radiomics" use (trained here when absent).
    """

    task: Literal["seg", "ef", "cls"] = "seg"
    shards: str = "runs/real/acdc"
    out: str = "runs/fewshot/seg"
    labels: list[int | Literal["all"]] = field(default_factory=lambda: [1, 2, 5, 10, 20, "all"])
    seeds: int = 3
    methods: list[str] | None = None
    pretrained: str | None = None
    budget_s: float = 60.0
    steps: int | None = None
    train_split: str = "train"
    eval_split: str = "test"
    frames: int = 2
    batch_size: int = 8
    max_slices: int = 16
    model: dict[str, Any] = field(default_factory=dict)
    method_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    seg_from: str | None = None
    seg_method: str = "pretrained"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        self.labels = [str(n) for n in self.labels]
        for n in self.labels:
            if n != "all" and (not n.isdigit() or int(n) < 1):
                raise ValueError(f"labels: {n!r} is neither a positive count nor 'all'")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        self.methods = list(self.methods or DEFAULT_METHODS[self.task])
        unknown = [m for m in self.methods if m not in METHODS[self.task]]
        if unknown:
            known = ", ".join(METHODS[self.task])
            raise ValueError(f"unknown {self.task} method(s) {unknown}; known: {known}")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 (or null for the time budget), got {self.steps}")
        if self.seg_method not in METHODS["seg"]:
            raise ValueError(
                f"seg_method {self.seg_method!r} is not a seg method; known: "
                f"{', '.join(METHODS['seg'])}"
            )
        if self.weighted():
            self._check_weights()
        self._check_model_keys()

    def weighted(self) -> list[tuple[str, str]]:
        """(task, method) of every network here that starts from ``pretrained``: the task's own
        methods, and the seg_method's segmenter, which from_seg and radiomics train when seg_from
        is not given (a seg_from lacking some runs' label maps: FewShotBenchmark.check_weights)."""
        own = [(self.task, m) for m in self.methods if METHODS[self.task][m].get("from_weights")]
        if self._trains_seg_here():
            own.append(("seg", self.seg_method))
        return own

    def _trains_seg_here(self) -> bool:
        """Whether from_seg or radiomics train the seg_method's segmenter (no seg_from), and it
        starts from weights."""
        reuses_seg = any(m in SEG_REUSE for m in self.methods) and not self.seg_from
        return reuses_seg and bool(METHODS["seg"][self.seg_method].get("from_weights"))

    def _check_weights(self) -> None:
        """Methods that start from weights get cmrfm's release when none are named; "none" and
        weights that are not there are refused now, not after hours of other runs."""
        weighted = [m if t == self.task else f"{m} (the seg_method)" for t, m in self.weighted()]
        if self.pretrained in (None, ""):
            self.pretrained = DEFAULT_RELEASE
        if self.pretrained == NO_WEIGHTS:
            free = [m for m, spec in METHODS[self.task].items()
                    if not spec.get("from_weights") and m not in SEG_REUSE]  # fmt: skip
            raise ValueError(
                f"methods {', '.join(weighted)} start from pretrained weights and --pretrained "
                f"none gives none: leave them out (e.g. --methods {','.join(free)}) or name weights"
            )
        try:
            path = resolve_pretrained(self.pretrained)
        except FileNotFoundError as error:
            raise ValueError(str(error)) from None
        if path is None or not path.exists():
            raise ValueError(f"pretrained {self.pretrained}: no such checkpoint or hub folder")

    def _check_model_keys(self) -> None:
        """model and method_args keys must be constructor arguments of the systems that take
        them (SegFinetuner, SubjectFinetuner: ``model`` serves both when ef/cls reuse the
        segmentation runs); a typo is named with the nearest argument."""
        import difflib

        from cmrfm_io.constructor import constructor_arguments
        from finetune.system import SegFinetuner, SubjectFinetuner

        def arguments(*systems: type) -> list[str]:
            return list(dict.fromkeys(n for system in systems
                                      for n in constructor_arguments(system)))  # fmt: skip

        every = {m for methods in METHODS.values() for m in methods}  # other tasks' are fine
        unknown_methods = sorted(set(self.method_args) - every)
        if unknown_methods:
            raise ValueError(f"method_args: unknown methods {unknown_methods}; known: "
                             f"{', '.join(sorted(every))}")  # fmt: skip
        subject = SubjectFinetuner if self.task != "seg" else SegFinetuner
        given = [("model", self.model, arguments(SegFinetuner, SubjectFinetuner))]
        given += [(f"method_args.{m}", a, arguments(subject)) for m, a in self.method_args.items()
                  if m in METHODS[self.task] and m not in SEG_REUSE]  # fmt: skip
        for where, args, names in given:
            for key in args:
                if key not in names:
                    near = difflib.get_close_matches(key, names, n=1)
                    hint = f"did you mean {near[0]!r}?" if near else f"it takes {', '.join(names)}"
                    raise ValueError(f"{where}.{key} is not a fine-tuning argument; {hint}")

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


def load_config(path: Path | None, overrides: dict[str, Any]) -> FewShotConfig:
    """FewShotConfig from a YAML file (keys = its fields) with command-line values on top, read by
    jsonargparse as LightningCLI reads the training configs: each value is checked against its
    field's type, and a wrong key or value is named in one line with the file."""
    import difflib

    import yaml
    from jsonargparse import ArgumentParser

    where = str(path) if path is not None else "options"
    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{where}: a few-shot config is a mapping of FewShotConfig fields")
    values |= {k: v for k, v in overrides.items() if v is not None}
    known = list(FewShotConfig.__dataclass_fields__)
    for key in values:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(known)}"
            raise ValueError(f"{where}: unknown key {key!r}; {hint}")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FewShotConfig, "fewshot", fail_untyped=True)
    try:
        parsed = parser.parse_object({"fewshot": values})
    except argparse.ArgumentError as error:  # a value of the wrong type: the key and the value
        raise ValueError(
            f"{where}: " + " ".join(str(error).replace("fewshot.", "").split())
        ) from None
    try:
        return parser.instantiate(parsed).fewshot  # __post_init__ checks what types cannot
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
