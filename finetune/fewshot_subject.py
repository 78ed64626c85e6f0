"""The few-shot benchmark's subject-level tasks: EF regression ("ef") and diagnosis ("cls"), by a
fine-tuned subject model (attention pooling over slices), from the segmentation method's masks
(``from_seg``) or by radiomics + SVM on them (``radiomics``). A mixin of
:class:`finetune.fewshot.FewShotBenchmark`, which it reads: ``cfg``, ``eval``, ``_system_args``
and ``_seg_predictions``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch

from finetune.budget import fit_for_budget

if TYPE_CHECKING:
    from finetune.fewshot import Run
    from finetune.fewshot_config import FewShotConfig


class SubjectTasks:
    """``_ef`` and ``_cls``: one run of a subject-level task, (summary row, subject rows)."""

    cfg: FewShotConfig
    eval: list[dict]
    _system_args: Callable[..., dict[str, Any]]
    _seg_predictions: Callable[[Run, list[dict]], dict[str, np.ndarray]]

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
            drawn, self.cfg.frames, self.cfg.max_slices, self.cfg.task, augment=True, seed=run.seed
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
