"""The few-shot benchmark: N labelled subjects x seeds x methods, one fixed evaluation split.

Every method sees the same draws (``draw_labelled``: stratified by diagnosis group, seeded) and
the same training time; the evaluation split is disjoint from every draw. Each finished run is
appended to ``results.jsonl`` at once, so a job that dies loses at most the run in progress and a
re-run with the same settings picks up where it stopped.

The settings are :class:`finetune.fewshot_config.FewShotConfig`; ``finetune.budget`` trains each
run, ``finetune.results`` writes its files and ``finetune.report`` summarises the folder.
"""

from __future__ import annotations

import json
import numbers
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cmrfm_io.files import read_json
from data_shards.stream import load_subjects, shard_urls
from finetune.budget import fit_for_budget
from finetune.data import LabelledClips, draw_labelled
from finetune.fewshot_config import (
    HEADLINES,
    METHODS,
    SAME_RUN_KEYS,
    SEG_REUSE,
    FewShotConfig,
    load_config,
)
from finetune.fewshot_subject import SubjectTasks
from finetune.report import write_report
from finetune.results import (
    append_jsonl,
    load_predictions,
    read_jsonl,
    save_predictions,
    write_jsonl,
)
from foundation.released import DEFAULT_RELEASE, NO_WEIGHTS

# load_config: `cmrfm fewshot` (cmrfm/cli/train.py) imports it from here.
__all__ = ["FewShotBenchmark", "Run", "load_config"]

# A result row's fields that say which run it is, and what its training took (kept by rescore).
RUN_KEYS = ("run", "task", "method", "labels", "n", "seed", "train_subjects")
TRAINING_KEYS = ("steps", "planned_steps", "cut_short", "train_s", "s_per_step_probe", "predict_s")


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


class FewShotBenchmark(SubjectTasks):
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
        self._weights_checked = False

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
            before = read_json(saved)
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

    def _system_args(self, run: Run, task: str | None = None) -> dict[str, Any]:
        """The system's constructor arguments for run (a method of ``task``, default the
        benchmark's): shared model arguments, the method's own, weights if it starts from them."""
        task = task or self.cfg.task
        spec = dict(METHODS[task][run.method])
        from_weights = spec.pop("from_weights", False)
        # method_args name the benchmark's own methods: an ef benchmark's "pretrained" arguments
        # are its subject model's, not those of the "pretrained" segmenter from_seg trains
        other = task != self.cfg.task and run.method in METHODS[self.cfg.task]
        own = {} if other else self.cfg.method_args.get(run.method, {})
        args = {**self.cfg.model, **spec, **own}
        args["pretrained"] = self.cfg.pretrained if from_weights else None
        return args

    def check_weights(self) -> None:
        """Build every network that starts from cfg.pretrained once, before any run: weights that
        cannot be read or do not fit the configured network are refused now (ValueError naming
        the file), not when that method's first run comes up, maybe hours in."""
        from finetune.system import SegFinetuner, SubjectFinetuner

        if self._weights_checked:
            return
        built = self.cfg.weighted()  # task "seg" for the seg_method's segmenter
        if self._seg_gaps():  # seg_from lacks some label maps: that segmenter is trained here
            built.append(("seg", self.cfg.seg_method))
        for task, method in dict.fromkeys(built):
            args = self._system_args(Run(method, "1", 1, 0), task)
            _ = SegFinetuner(**args) if task == "seg" else SubjectFinetuner(**args, task=task)
        self._weights_checked = True

    def _seg_gaps(self) -> list[Path]:
        """The seg_from label maps that from_seg or radiomics runs need and that are missing,
        when the seg_method starts from weights; refused when no weights are given."""
        cfg = self.cfg
        if not cfg.seg_from or not any(m in SEG_REUSE for m in cfg.methods):
            return []
        if not METHODS["seg"][cfg.seg_method].get("from_weights"):
            return []
        folder = Path(cfg.seg_from) / "predictions"
        needed = {
            f"{cfg.seg_method}_n{r.n}_s{r.seed}" for r in self.runs() if r.method in SEG_REUSE
        }
        gaps = sorted(
            folder / f"{name}.npz" for name in needed if not (folder / f"{name}.npz").exists()
        )
        if gaps and cfg.pretrained in (None, "", NO_WEIGHTS):
            raise ValueError(
                f"{folder}: no label maps for {', '.join(p.stem for p in gaps)}; training them here "
                f"starts {cfg.seg_method} from weights: give --pretrained (e.g. {DEFAULT_RELEASE}), "
                "or run the segmentation benchmark into seg_from first"
            )
        return gaps

    def _seg(self, run: Run, drawn: list[dict]) -> tuple[dict, list[dict]]:
        preds, info, system = self._train_segmenter(run, drawn)
        summary = self._score_seg(preds)
        if self._keeps_model(run):  # its card reports the scores it was just given
            self._save_model(system, run, drawn, info, summary)
        return summary | info, self._subject_rows

    def _train_segmenter(
        self, run: Run, drawn: list[dict]
    ) -> tuple[dict[str, np.ndarray], dict, L.LightningModule]:
        """(label maps of the evaluation subjects, training figures, the trained system)."""
        from finetune.evaluate import predict_study
        from finetune.system import SegFinetuner

        L.seed_everything(run.seed, workers=True, verbose=False)
        system = SegFinetuner(**self._system_args(run, "seg"))
        dataset = LabelledClips(drawn, self.cfg.frames, augment=True, seed=run.seed)
        info = fit_for_budget(
            system, dataset, self.cfg.batch_size, self.cfg.budget_s, run.seed, self.cfg.steps
        )
        system.eval()
        start = time.perf_counter()
        preds = {s["key"]: predict_study(system, s["image"], self.cfg.frames) for s in self.eval}
        info["predict_s"] = time.perf_counter() - start
        save_predictions(self.out / "predictions" / f"{run.name}.npz", preds)
        return preds, info, system

    def _keeps_model(self, run: Run) -> bool:
        """Whether run's model is saved as a package: seed 0 at the largest N only."""
        return run.seed == 0 and run.n == max(r.n for r in self.runs())

    def _save_model(
        self,
        system: L.LightningModule,
        run: Run,
        drawn: list[dict],
        info: dict,
        scores: dict | None = None,
    ) -> Path:
        """The run's model as a fine-tuned package in out/models/RUN, what `cmrfm predict
        --model` takes; its card reports ``scores`` (on the evaluation split) when given."""
        from finetune.package import save_finetuned
        from foundation.datasets import detect_datasets

        manifest = read_json(Path(self.cfg.shards) / "manifest.json")
        training = {"method": run.method, "labels": run.n, "seed": run.seed} | {
            "subjects": [s["key"] for s in drawn],
            "steps": info["steps"],
            "pretrained": self._system_args(run, "seg").get("pretrained"),
        }
        return save_finetuned(
            system,
            self.out / "models" / run.name,
            preprocess=manifest["preprocess"],
            frames=self.cfg.frames,
            training=training,
            metrics=None if scores is None else {**scores, "scored_on": self._scored_on()},
            datasets=detect_datasets(manifest) or [manifest.get("source", "unknown")],
        )

    def _scored_on(self) -> str:
        """Where the scores come from: "7 val subjects of runs/real/acdc"."""
        return f"{len(self.eval)} {self.cfg.eval_split} subjects of {self.cfg.shards}"

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
        preds, info, system = self._train_segmenter(seg_run, drawn)
        if self._keeps_model(seg_run):
            self._save_model(system, seg_run, drawn, info)
        return preds

    # ---- the whole benchmark

    def _budget_words(self) -> str:
        """What every run is given, as the config says: "1000 steps" or "60 s"."""
        return f"{self.cfg.steps} steps" if self.cfg.steps else f"{self.cfg.budget_s:g} s"

    def run(self) -> list[dict]:
        """Every run not yet in results.jsonl, then the summary files; returns the summary rows."""
        self.check_weights()
        done = self._prepare_out()
        draws = {f"n{r.n}_s{r.seed}": [s["key"] for s in self.draw(r)] for r in self.runs()}
        (self.out / "draws.json").write_text(json.dumps(draws, indent=1) + "\n")
        todo = [r for r in self.runs() if r.name not in done]
        self.console.print(
            f"few-shot {self.cfg.task}: {len(self.runs())} runs ({len(done)} done), "
            f"{len(self.labelled)} labelled training subjects, {len(self.eval)} evaluation subjects"
            f" ({self.cfg.eval_split}), {self._budget_words()} of training per run"
        )
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
        with Progress(*columns, TimeElapsedColumn(), console=self.console) as progress:
            bar = progress.add_task(self.cfg.task, total=len(todo))
            for i, run in enumerate(todo, 1):
                progress.update(bar, description=f"{self.cfg.task} {run.name}")
                row, subjects = self.run_one(run)
                append_jsonl(self.out / "subjects.jsonl", subjects)
                append_jsonl(self.out / "results.jsonl", [row])
                progress.console.print(self._run_line(row, i, len(todo)))
                progress.advance(bar)
        return self.report()

    def _run_line(self, row: dict, i: int, of: int) -> str:
        """One finished run, for a log under nohup where the bar shows only at the end:
        "unet_n1_s0: dice_mean 0.612, 1000 steps in 205 s (3/24)"."""
        metric = HEADLINES[self.cfg.task][0]
        value = row.get(metric)
        shown = f"{value:.3f}" if isinstance(value, numbers.Real) else "–"
        steps = f", {row['steps']} steps" if row.get("steps") is not None else ""
        took = f" in {row['train_s']:.0f} s" if row.get("train_s") is not None else ""
        return f"{row['run']}: {metric} {shown}{steps}{took} ({i}/{of})"

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
        found = {r["method"] for r in read_jsonl(self.out / "results.jsonl")}
        methods = [m for m in METHODS[self.cfg.task] if m in found or m in self.cfg.methods]
        return write_report(self.out, self.cfg.task, HEADLINES[self.cfg.task], methods)


def _tag_subjects(subjects: Sequence[dict], run_row: dict) -> list[dict]:
    """Per-subject rows marked with their run's name, method and n (for subjects.jsonl)."""
    tag = {k: run_row[k] for k in ("run", "method", "n")}
    return [s | tag for s in subjects]
