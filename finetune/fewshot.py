"""The few-shot benchmark: N labelled subjects x seeds x methods, one fixed evaluation split.

Every method sees the same draws (``draw_labelled``: stratified by diagnosis group, seeded) and
the same training time; the evaluation split is disjoint from every draw. Each finished run is
appended to ``results.jsonl`` at once, so a job that dies loses at most the run in progress and a
re-run with the same settings picks up where it stopped.
"""

from __future__ import annotations

import io
import json
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from cmrfm_io.files import json_default, write_atomic
from data_shards.stream import load_subjects, shard_urls
from finetune.data import LabelledClips, draw_labelled
from foundation.progress import log_file_progress

TASKS = ("seg", "ef", "cls")

# Methods by name: constructor overrides for the task's system, and whether the backbone starts
# from the pretrained weights. "from_seg" and "radiomics" reuse the segmentation benchmark.
METHODS: dict[str, dict[str, dict[str, Any]]] = {
    "seg": {
        "pretrained": {"pretrained": True, "protocol": "full"},
        "scratch": {"pretrained": False, "protocol": "full"},
        "unet": {"pretrained": False, "arch": "unet"},
        "linear": {"pretrained": True, "protocol": "linear"},
        "partial": {"pretrained": True, "protocol": "partial"},
        "lora": {"pretrained": True, "protocol": "lora"},
    },
    "ef": {
        "pretrained": {"pretrained": True, "protocol": "full"},
        "scratch": {"pretrained": False, "protocol": "full"},
        "linear": {"pretrained": True, "protocol": "linear"},
        "lora": {"pretrained": True, "protocol": "lora"},
        "from_seg": {},
    },
    "cls": {
        "pretrained": {"pretrained": True, "protocol": "full"},
        "scratch": {"pretrained": False, "protocol": "full"},
        "linear": {"pretrained": True, "protocol": "linear"},
        "lora": {"pretrained": True, "protocol": "lora"},
        "radiomics": {},
    },
}
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
# A result row's fields that say which run it is, and what its training took (kept by rescore).
RUN_KEYS = ("run", "task", "method", "labels", "n", "seed", "train_subjects")
TRAINING_KEYS = ("steps", "planned_steps", "cut_short", "train_s", "s_per_step_probe", "predict_s")
# Settings a re-run must share with the results already in its folder.
SAME_RUN_KEYS = (
    "task", "shards", "train_split", "eval_split", "budget_s", "steps", "frames", "model"
)  # fmt: skip


@dataclass
class FewShotConfig:
    """One benchmark: a task, label counts, seeds and methods; YAML keys are these fields.

    labels holds counts or "all" (every labelled subject of train_split); seeds = how many seeds
    (0 .. seeds-1); budget_s = training seconds per run, the same for every method; steps =
    optimiser steps per run instead (the same for every method: equal time for methods that share
    a network, whatever else the machine runs; `cmrfm bench seg` gives the step costs); model =
    constructor arguments shared by the methods (backbone, patch_size, tubelet, lr, ...);
    method_args = per-method overrides; seg_from = a segmentation benchmark's folder whose saved
    predictions "from_seg" and "radiomics" use (trained here when absent).
    """

    task: str = "seg"
    shards: str = "runs/real/acdc"
    out: str = "runs/fewshot/seg"
    labels: list[str] = field(default_factory=lambda: ["1", "2", "5", "10", "20", "all"])
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
        needs_weights = any(METHODS[self.task][m].get("pretrained") for m in self.methods)
        if needs_weights and not self.pretrained:
            raise ValueError(
                "methods " + ", ".join(self.methods) + " start from pretrained weights: pass "
                "--pretrained (a hub folder from `cmrfm export` or a pretraining checkpoint)"
            )

    @property
    def out_dir(self) -> Path:
        return Path(self.out)


@dataclass
class Run:
    """One cell of the benchmark: a method at n labelled subjects (label spec kept) and a seed."""

    method: str
    labels: str
    n: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}_n{self.n}_s{self.seed}"


# --------------------------------------------------------------------------- training helpers


def steps_for_budget(
    step: Callable[[], torch.Tensor], budget_s: float, warmup: int = 1, probe: int = 3
) -> tuple[int, float]:
    """How many optimiser steps fit in budget_s: times `probe` forward+backward passes of `step`
    (after `warmup`) and returns (steps, seconds per step). The weights are not changed."""
    times = []
    for i in range(warmup + probe):
        start = time.perf_counter()
        loss = step()
        loss.backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    per_step = float(np.median(times)) * 1.08  # the optimiser step and logging, measured ~5-8 %
    return max(10, int(budget_s / per_step)), per_step


def _zero_grads(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


class BudgetStop(L.Callback):
    """Stops training before a step would end past ``budget_s`` seconds from the start of
    training, judging the next step by the last one; ``cut_short`` says whether it stopped a run
    before its planned steps. The clock is ``time.monotonic``."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.cut_short = False
        self._start = self._last = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        now = time.monotonic()
        step_s, self._last = now - self._last, now
        if trainer.global_step < trainer.max_steps and now - self._start + step_s > self.budget_s:
            trainer.should_stop = True
            self.cut_short = True


def fit_for_budget(
    system: L.LightningModule,
    dataset: Dataset,
    batch_size: int,
    budget_s: float,
    seed: int,
    steps: int | None = None,
) -> dict[str, float]:
    """Train `system` on clips drawn with replacement from dataset for at most budget_s seconds,
    or for exactly ``steps`` optimiser steps when given (no clock involved).

    The step count comes from a timed probe, so the warmup + cosine schedule ends when the time
    does; on a machine slower than the probe said, :class:`BudgetStop` ends the run before a
    step would take it past budget_s (the schedule keeps the planned length). Returns steps
    done, planned_steps, cut_short, train_s and s_per_step_probe (None with ``steps``).
    """
    generator = torch.Generator().manual_seed(seed)
    probe = next(
        iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator))
    )
    system.train()
    per_step = None
    if steps is None:
        with warnings.catch_warnings():  # self.log outside a Trainer warns; the probe logs nothing
            warnings.simplefilter("ignore")
            steps, per_step = steps_for_budget(lambda: system.training_step(probe, 0), budget_s)
        _zero_grads(system)
    else:
        budget_s = math.inf
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=steps * batch_size, generator=generator
    )
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)
    budget = BudgetStop(budget_s)
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=[budget, *log_file_progress()],
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.monotonic()
    trainer.fit(system, train_dataloaders=loader)
    return {
        "steps": int(trainer.global_step),
        "planned_steps": steps,
        "cut_short": budget.cut_short,
        "train_s": time.monotonic() - start,
        "s_per_step_probe": per_step,
    }


# --------------------------------------------------------------------------- the benchmark


class FewShotBenchmark:
    """Runs every (method, N, seed) of a config into cfg.out; see the module docstring."""

    def __init__(self, cfg: FewShotConfig, console: Console | None = None) -> None:
        self.cfg, self.console = cfg, console or Console()
        self.out = cfg.out_dir
        self.train = load_subjects(shard_urls(cfg.shards), splits=[cfg.train_split])
        self.eval = [
            s
            for s in load_subjects(shard_urls(cfg.shards), splits=[cfg.eval_split])
            if s["label"] is not None
        ]
        if not self.eval:
            raise ValueError(f"{cfg.shards}: no labelled subjects in split {cfg.eval_split!r}")
        self._check_disjoint()
        self.labelled = [s for s in self.train if s["label"] is not None]

    def _check_disjoint(self) -> None:
        """The evaluation split shares no subject (nor a subject's split group) with training."""
        groups = lambda ss: {s["meta"].get("split_group", s["key"]) for s in ss}  # noqa: E731
        shared = groups(self.train) & groups(self.eval)
        if shared:
            raise ValueError(
                f"{self.cfg.shards}: splits {self.cfg.train_split!r} and {self.cfg.eval_split!r}"
                f" share subjects {sorted(shared)[:5]}"
            )

    # ---- plan and bookkeeping

    def runs(self) -> list[Run]:
        """Every cell, smallest N first, so partial results already span the curve."""
        cells = []
        for spec in self.cfg.labels:
            n = len(self.labelled) if spec == "all" else int(spec)
            if n > len(self.labelled):
                raise ValueError(
                    f"labels={n} but split {self.cfg.train_split!r} of {self.cfg.shards} has "
                    f"{len(self.labelled)} labelled subjects"
                )
            for seed in range(self.cfg.seeds):
                cells += [Run(m, spec, n, seed) for m in self.cfg.methods]
        return sorted(cells, key=lambda r: (r.n, r.seed))

    def draw(self, run: Run) -> list[dict]:
        return draw_labelled(self.labelled, run.n, run.seed)

    def _prepare_out(self) -> set[str]:
        """Create out/, refuse a folder holding another benchmark, return the finished runs."""
        self.out.mkdir(parents=True, exist_ok=True)
        config = asdict(self.cfg)
        saved = self.out / "config.json"
        if saved.exists():
            before = json.loads(saved.read_text())
            changed = [k for k in SAME_RUN_KEYS if before.get(k) != config.get(k)]
            if changed:
                raise FileExistsError(
                    f"{saved}: this folder holds a benchmark with other {', '.join(changed)};"
                    " use another --out"
                )
        saved.write_text(json.dumps(config, indent=1) + "\n")
        done = {row["run"] for row in read_jsonl(self.out / "results.jsonl")}
        # A job killed between a run's subject rows and its result line left orphans: the run
        # is redone, so drop them rather than count its subjects twice.
        subjects = read_jsonl(self.out / "subjects.jsonl")
        if any(s.get("run") not in done for s in subjects):
            write_jsonl(self.out / "subjects.jsonl", [s for s in subjects if s.get("run") in done])
        return done

    # ---- one run

    def run_one(self, run: Run) -> tuple[dict, list[dict]]:
        """Train and score one cell; returns the result row and per-subject rows."""
        drawn = self.draw(run)
        runner = {"seg": self._seg, "ef": self._ef, "cls": self._cls}[self.cfg.task]
        row, subjects = runner(run, drawn)
        values = (run.name, self.cfg.task, run.method, run.labels, run.n, run.seed)
        base = dict(zip(RUN_KEYS, (*values, [s["key"] for s in drawn]), strict=True))
        # the run's own fields win: a metric dict may hold its own "n" (subjects scored)
        return row | base, _tag_subjects(subjects, base)

    def _system_args(self, run: Run) -> dict[str, Any]:
        spec = dict(METHODS[self.cfg.task][run.method])
        pretrained = spec.pop("pretrained", False)
        args = {**self.cfg.model, **spec, **self.cfg.method_args.get(run.method, {})}
        args["pretrained"] = self.cfg.pretrained if pretrained else None
        return args

    def _seg(self, run: Run, drawn: list[dict]) -> tuple[dict, list[dict]]:
        preds, info = self._train_segmenter(run, drawn)
        return self._score_seg(preds) | info, self._subject_rows

    def _train_segmenter(self, run: Run, drawn: list[dict]) -> tuple[dict[str, np.ndarray], dict]:
        from finetune.evaluate import predict_study
        from finetune.system import SegFinetuner

        L.seed_everything(run.seed, workers=True, verbose=False)
        system = SegFinetuner(**self._system_args(run))
        dataset = LabelledClips(drawn, self.cfg.frames, augment=True)
        info = fit_for_budget(
            system, dataset, self.cfg.batch_size, self.cfg.budget_s, run.seed, self.cfg.steps
        )
        system.eval()
        start = time.perf_counter()
        preds = {s["key"]: predict_study(system, s["image"], self.cfg.frames) for s in self.eval}
        info["predict_s"] = time.perf_counter() - start
        save_predictions(self.out / "predictions" / f"{run.name}.npz", preds)
        if run.seed == 0 and run.n == max(r.n for r in self.runs()):
            self._save_model(system, run, drawn, info)  # what `cmrfm predict --model` takes
        return preds, info

    def _save_model(
        self, system: L.LightningModule, run: Run, drawn: list[dict], info: dict
    ) -> Path:
        """The run's model as a fine-tuned package in out/models/RUN (largest N, seed 0 only)."""
        from finetune.package import save_finetuned
        from foundation.card import detect_datasets

        manifest = json.loads((Path(self.cfg.shards) / "manifest.json").read_text())
        training = {"method": run.method, "labels": run.n, "seed": run.seed} | {
            "subjects": [s["key"] for s in drawn],
            "steps": info["steps"],
            "pretrained": self._system_args(run).get("pretrained"),
        }
        return save_finetuned(
            system,
            self.out / "models" / run.name,
            preprocess=manifest["preprocess"],
            frames=self.cfg.frames,
            training=training,
            datasets=detect_datasets(manifest) or [manifest.get("source", "unknown")],
        )

    def _score_seg(self, preds: dict[str, np.ndarray]) -> dict:
        from finetune.evaluate import evaluate_predictions

        num_classes = int(self.cfg.model.get("num_classes", 4))
        report = evaluate_predictions(preds, self.eval, num_classes)
        self._subject_rows = report["subjects"]
        return report["summary"]

    def _seg_predictions(self, run: Run, drawn: list[dict]) -> dict[str, np.ndarray]:
        """Predicted label maps of the evaluation subjects by the segmentation method at this
        (N, seed): read from seg_from when that benchmark ran, else trained here."""
        seg_run = Run(self.cfg.seg_method, run.labels, run.n, run.seed)
        if self.cfg.seg_from:
            path = Path(self.cfg.seg_from) / "predictions" / f"{seg_run.name}.npz"
            if path.exists():
                return load_predictions(path)
            self.console.print(f"[yellow]{path} missing: training {seg_run.name} here")
        task, self.cfg.task = self.cfg.task, "seg"
        try:
            preds, _ = self._train_segmenter(seg_run, drawn)
        finally:
            self.cfg.task = task
        return preds

    def _ef(self, run: Run, drawn: list[dict]) -> tuple[dict, list[dict]]:
        from finetune.metrics import agreement, clinical_indices
        from finetune.subject import subject_targets

        if run.method == "from_seg":
            preds = self._seg_predictions(run, drawn)
            rows = []
            for s in self.eval:
                spacing, ed, es = s["meta"]["spacing"], int(s["meta"]["ed"]), int(s["meta"]["es"])
                pred = clinical_indices(preds[s["key"]], spacing, ed, es)
                true = clinical_indices(s["label"], spacing, ed, es)
                rows.append(
                    _ef_row(s, (pred["lv_ef"], pred["rv_ef"]), (true["lv_ef"], true["rv_ef"]))
                )
            info: dict = {}
        else:
            system, info = self._train_subject_model(run, drawn)
            outputs = self._predict_subjects(system)
            rows = [
                _ef_row(s, tuple(o.tolist()), subject_targets(s)["ef"])
                for s, o in zip(self.eval, outputs)
            ]
        summary = {}
        for side in ("lv", "rv"):
            stats = agreement(
                np.array([r[f"{side}_ef_pred"] for r in rows], dtype=float),
                np.array([r[f"{side}_ef_true"] for r in rows], dtype=float),
            )
            summary |= {f"{side}_ef_{k}": v for k, v in stats.items()}
        return summary | info, rows

    def _cls(self, run: Run, drawn: list[dict]) -> tuple[dict, list[dict]]:
        """Diagnosis scored on the evaluation subjects whose group is known (an ACDC group);
        the others get a subject row with group None and their prediction, and no score."""
        from finetune.metrics import classification_metrics
        from finetune.subject import ACDC_GROUPS

        truth = [_known_group(s) for s in self.eval]
        if run.method == "radiomics":
            predicted, info = self._radiomics(run, drawn)
        else:
            system, info = self._train_subject_model(run, drawn)
            logits = self._predict_subjects(system)
            predicted = [ACDC_GROUPS[int(o.argmax())] for o in logits]
        scored = [(t, p) for t, p in zip(truth, predicted) if t is not None]
        metrics = classification_metrics(
            [t for t, _ in scored], [p for _, p in scored], list(ACDC_GROUPS)
        )
        rows = [
            {"subject": s["key"], "group": t, "predicted": p}
            for s, t, p in zip(self.eval, truth, predicted)
        ]
        return metrics | info, rows

    def _radiomics(self, run: Run, drawn: list[dict]) -> tuple[list[str], dict]:
        """SVM on features of the ground truth of the drawn subjects with a known group; applied
        to features of the evaluation subjects' predicted segmentations (no ground truth at test
        time)."""
        from finetune.radiomics import RadiomicsSVM, subject_features

        def features(s: dict, label: np.ndarray) -> dict[str, float]:
            m = s["meta"]
            return subject_features(s["image"], label, m["spacing"], int(m["ed"]), int(m["es"]))

        known = [s for s in drawn if _known_group(s) is not None]
        if not known:
            raise ValueError(
                f"{self.cfg.shards}: none of the {len(drawn)} subjects drawn for {run.name} has "
                "a known diagnosis group: radiomics has nothing to learn from"
            )
        start = time.perf_counter()
        preds = self._seg_predictions(run, drawn)
        classifier = RadiomicsSVM()
        classifier.fit([features(s, s["label"]) for s in known], [_known_group(s) for s in known])
        predicted = classifier.predict([features(s, preds[s["key"]]) for s in self.eval])
        return list(predicted), {"train_s": time.perf_counter() - start}

    def _train_subject_model(self, run: Run, drawn: list[dict]) -> tuple[L.LightningModule, dict]:
        from finetune.data import LabelledSubjects
        from finetune.system import SubjectFinetuner

        L.seed_everything(run.seed, workers=True, verbose=False)
        args = self._system_args(run) | {"task": self.cfg.task}
        system = SubjectFinetuner(**args)
        dataset = LabelledSubjects(
            drawn, self.cfg.frames, self.cfg.max_slices, task=self.cfg.task, augment=True
        )
        batch = min(self.cfg.batch_size, len(dataset))
        info = fit_for_budget(system, dataset, batch, self.cfg.budget_s, run.seed, self.cfg.steps)
        return system.eval(), info

    @torch.no_grad()
    def _predict_subjects(self, system: L.LightningModule) -> list[np.ndarray]:
        from finetune.data import subject_stack

        outputs = []
        device = next(system.parameters()).device
        for s in self.eval:
            stack, mask = subject_stack(s, self.cfg.frames, self.cfg.max_slices)
            out = system(stack[None].to(device), mask[None].to(device))[0]
            outputs.append(out.float().cpu().numpy())
        return outputs

    # ---- the whole benchmark

    def run(self) -> list[dict]:
        """Every run not yet in results.jsonl, then the summary files; returns the summary rows."""
        done = self._prepare_out()
        draws = {f"n{r.n}_s{r.seed}": [s["key"] for s in self.draw(r)] for r in self.runs()}
        (self.out / "draws.json").write_text(json.dumps(draws, indent=1) + "\n")
        todo = [r for r in self.runs() if r.name not in done]
        self.console.print(
            f"few-shot {self.cfg.task}: {len(self.runs())} runs ({len(done)} done), "
            f"{len(self.labelled)} labelled training subjects, {len(self.eval)} evaluation subjects"
            f" ({self.cfg.eval_split}), {self.cfg.budget_s:g} s of training per run"
        )
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        with Progress(*columns, TimeElapsedColumn(), console=self.console) as progress:
            bar = progress.add_task(self.cfg.task, total=len(todo))
            for run in todo:
                progress.update(bar, description=f"{self.cfg.task} {run.name}")
                row, subjects = self.run_one(run)
                append_jsonl(self.out / "subjects.jsonl", subjects)
                append_jsonl(self.out / "results.jsonl", [row])
                progress.advance(bar)
        return self.report()

    def rescore(self) -> list[dict]:
        """Score every finished segmentation run again from its saved label maps (after a metric
        was added or fixed) and rewrite results.jsonl, subjects.jsonl and the report; training
        figures are kept and nothing retrains. A run without its predictions keeps its scores."""
        if self.cfg.task != "seg":
            raise ValueError("rescoring reads saved label maps: segmentation benchmarks only")
        self._prepare_out()
        results = read_jsonl(self.out / "results.jsonl")
        if not results:
            raise FileNotFoundError(f"{self.out / 'results.jsonl'}: no finished runs to rescore")
        old_subjects = read_jsonl(self.out / "subjects.jsonl")
        rows, subjects = [], []
        for row in results:
            path = self.out / "predictions" / f"{row['run']}.npz"
            if not path.exists():
                self.console.print(f"[yellow]{path} missing: {row['run']} keeps its scores")
                rows.append(row)
                subjects += [s for s in old_subjects if s.get("run") == row["run"]]
                continue
            summary = self._score_seg(load_predictions(path))
            kept = {k: row[k] for k in (*RUN_KEYS, *TRAINING_KEYS) if k in row}
            rows.append(summary | kept)
            subjects += _tag_subjects(self._subject_rows, row)
        write_jsonl(self.out / "subjects.jsonl", subjects)
        write_jsonl(self.out / "results.jsonl", rows)
        self.console.print(f"rescored {len(rows)} runs in {self.out}")
        return self.report()

    def report(self) -> list[dict]:
        """summary.csv / summary.md (mean +- std over seeds) and plots from results.jsonl: every
        method in the folder, also those an earlier invocation ran (--methods adds, never hides)."""
        from finetune.report import write_report

        found = {r["method"] for r in read_jsonl(self.out / "results.jsonl")}
        methods = [m for m in METHODS[self.cfg.task] if m in found or m in self.cfg.methods]
        return write_report(self.out, self.cfg.task, HEADLINES[self.cfg.task], methods)


def _tag_subjects(subjects: Sequence[dict], run_row: dict) -> list[dict]:
    """Per-subject rows marked with their run's name, method and n (for subjects.jsonl)."""
    tag = {k: run_row[k] for k in ("run", "method", "n")}
    return [s | tag for s in subjects]


def _known_group(subject: dict) -> str | None:
    """The subject's diagnosis when it is one of ACDC's groups, else None (unknown)."""
    from finetune.subject import ACDC_GROUPS

    group = subject["meta"].get("group")
    return group if group in ACDC_GROUPS else None


def _ef_row(subject: dict, pred: Sequence[float], true: Sequence[float]) -> dict:
    return {
        "subject": subject["key"],
        "group": subject["meta"].get("group"),
        "lv_ef_pred": float(pred[0]),
        "rv_ef_pred": float(pred[1]) if len(pred) > 1 else math.nan,
        "lv_ef_true": float(true[0]),
        "rv_ef_true": float(true[1]) if len(true) > 1 else math.nan,
    }


# --------------------------------------------------------------------------- files


def save_predictions(path: Path, preds: dict[str, np.ndarray]) -> None:
    """Label maps by subject key, compressed (a 10 x 2 x 128 x 128 map takes ~10 kB)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **preds)
    write_atomic(path, buffer.getvalue())  # a killed job never leaves half a file under path


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Replace a JSON-lines file whole: written aside, then renamed over the old one."""
    write_atomic(path, "".join(json.dumps(r, default=json_default) + "\n" for r in rows))


def append_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row, default=json_default) + "\n")
        f.flush()


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a last line cut by a killed job is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def group_rows(
    rows: Sequence[dict], metric: str
) -> dict[str, list[tuple[int, str, float, float, int]]]:
    """method -> [(n, label spec, mean, std, runs)] of one metric over seeds, sorted by n."""
    cells: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in rows:
        value = r.get(metric)
        if value is not None and np.isfinite(value):
            cells[(r["method"], r["n"], r["labels"])].append(float(value))
    out: dict[str, list] = defaultdict(list)
    for (method, n, spec), values in sorted(cells.items(), key=lambda kv: kv[0][1]):
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[method].append((n, spec, float(np.mean(values)), std, len(values)))
    return dict(out)


def load_config(path: Path | None, overrides: dict[str, Any]) -> FewShotConfig:
    """FewShotConfig from a YAML file (keys = its fields) with command-line values on top."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a few-shot config is a mapping of FewShotConfig fields")
    values |= {k: v for k, v in overrides.items() if v is not None}
    known = FewShotConfig.__dataclass_fields__
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{path or 'options'}: unknown keys {unknown}; known: {', '.join(known)}")
    return FewShotConfig(**values)
