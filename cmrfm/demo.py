"""`cmrfm demo`: the phantom -> shards -> MAE pretraining -> few-shot fine-tuning -> report; or an
ACDC folder -> shards -> few-shot fine-tuning from cmrfm's released backbone -> report."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from cmrfm import CONFIGS
from cmrfm.figures import mae_figure, overlay_figure
from cmrfm.train import run_training
from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig
from data_shards.stream import load_subjects
from finetune.data import take_window
from finetune.evaluate import evaluate_checkpoint, load_finetune_checkpoint, predict_study
from foundation.checkpoint import restore
from foundation.released import DEFAULT_RELEASE, NO_WEIGHTS, resolve_pretrained
from pretext.system import PretrainSystem


@dataclass
class DemoPlan:
    """What one demo run converts and trains; the configs hold the model and optimiser.
    pretrain_config None: no pretraining stage, fine-tuning starts from ``pretrained`` (a released
    model's name, a checkpoint or hub folder, or "none" for scratch)."""

    source: str
    root: Path | None
    source_options: dict
    preprocess: PreprocessConfig
    pretrain_config: Path | None
    finetune_config: Path
    pretrained: str | None = None
    pretrain_args: list[str] = field(default_factory=list)
    finetune_args: list[str] = field(default_factory=list)


def make_plan(data: Path | None, quick: bool, pretrained: str | None = None) -> DemoPlan:
    """Phantom by default (pretrained here first); an ACDC folder with data, fine-tuned from
    ``pretrained`` (default: the release); quick shrinks model and steps for tests. Raises
    ValueError or FileNotFoundError for what cannot run, before any work."""
    if data is None and pretrained is not None:
        raise ValueError(
            "the phantom demo pretrains its own backbone: --pretrained goes with --data"
        )
    if data is None:
        plan = DemoPlan(
            "phantom",
            None,
            {"n": 40, "seed": 0, "size": 80, "spacing": 2.0},
            PreprocessConfig(spacing=2.0, size=80),
            CONFIGS / "pretrain_mae_phantom.yaml",
            CONFIGS / "finetune_seg_phantom.yaml",
        )
    else:
        plan = DemoPlan(
            "acdc",
            Path(data),
            {},
            PreprocessConfig(spacing=1.5, size=128),  # as the release was trained
            None,
            CONFIGS / "finetune_seg_acdc.yaml",
            pretrained or DEFAULT_RELEASE,
        )
    if quick and data is None:
        tiny = ["--model.init_args.backbone", "cmr_vit_test", "--trainer.max_steps", "3"]
        plan.pretrain_args = [*tiny, "--data.init_args.epoch_length", "96"]
        plan.finetune_args = [*tiny, "--data.init_args.epoch_length", "24"]
        plan.source_options |= {"n": 10, "slices": 3, "frames": 8, "size": 48}
        plan.preprocess = PreprocessConfig(spacing=3.0, size=48)
    elif quick:  # the release's own network: fewer steps and subjects only
        plan.finetune_args = ["--trainer.max_steps", "3", "--data.init_args.epoch_length", "24"]
        plan.source_options |= {"limit": 20}
    start = resolve_pretrained(plan.pretrained)  # FileNotFoundError for an absent release
    if start is not None and not start.exists():
        raise FileNotFoundError(f"--pretrained {plan.pretrained}: no such checkpoint or hub folder")
    return plan


def run_demo(
    out: Path,
    data: Path | None = None,
    quick: bool = False,
    labels: int = 4,
    seed: int = 0,
    pretrained: str | None = None,
) -> dict:
    """Run the whole chain into out/ and write out/report.md; returns the evaluation report."""
    console = Console()
    out = Path(out)
    plan = make_plan(data, quick, pretrained)
    out.mkdir(parents=True, exist_ok=True)
    shards = out / "shards"
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        timings[name] = time.perf_counter()
        console.rule(f"[bold]{name}")

    stage("shard")
    convert(
        plan.source,
        plan.root,
        shards,
        preprocess_config=plan.preprocess,
        source_options=plan.source_options,
        overwrite=True,
        console=console,
    )
    pre_ckpt = None
    if plan.pretrain_config is not None:
        stage("pretrain")
        pre_ckpt = train_stage(
            plan.pretrain_config, shards, out / "pretrain", seed, plan.pretrain_args
        )
    stage("finetune")
    start = str(pre_ckpt) if pre_ckpt is not None else str(plan.pretrained)
    finetune_args = ["--pretrained", start, "--labels", str(labels), *plan.finetune_args]
    ft_ckpt = train_stage(plan.finetune_config, shards, out / "finetune", seed, finetune_args)
    stage("evaluate")
    report = evaluate_checkpoint(ft_ckpt, str(shards), split="test")
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    stage("package")
    from cmrfm.export import export  # the fine-tuned model as a folder `cmrfm predict` takes

    export(ft_ckpt, out / "model", metrics=report["summary"], overwrite=True)
    console.print(f"model: {out / 'model'} (cmrfm predict STUDY --model {out / 'model'} --out DIR)")
    stage("figures")
    draw_figures(pre_ckpt, ft_ckpt, str(shards), out, seed)
    timings["end"] = time.perf_counter()
    names = list(timings)
    seconds = {n: timings[names[i + 1]] - timings[n] for i, n in enumerate(names[:-1])}
    write_markdown(out / "report.md", report, plan, labels, seed, seconds)
    console.print(f"report: {out / 'report.md'}")
    return report


def train_stage(config: Path, shards: Path, out: Path, seed: int, extra: list[str]) -> Path:
    """One LightningCLI run of config on the shards, logging and checkpointing into out."""
    args = [
        "--config",
        str(config),
        "--shards",
        str(shards),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    return run_training([*args, "--trainer.logger.init_args.save_dir", str(out), *extra])


def draw_figures(pre_ckpt: Path | None, ft_ckpt: Path, shards: str, out: Path, seed: int) -> None:
    """A segmentation overlay on the first test subject, and the MAE input/masked/reconstruction
    when the demo pretrained one (pre_ckpt)."""
    subject = next(s for s in load_subjects(shards, splits=["test"]) if s["label"] is not None)
    if pre_ckpt is not None:
        mae_figure_of(pre_ckpt, subject, out / "mae.png", seed)
    draw_overlay(ft_ckpt, subject, out / "segmentation.png")


def mae_figure_of(pre_ckpt: Path, subject: dict, path: Path, seed: int) -> None:
    """The MAE's input, masked input and reconstruction of one clip of subject (mid slice)."""
    pretrainer, _ = restore(PretrainSystem, pre_ckpt)
    mae = pretrainer.objective.eval()  # pretext.mae.MAE: the demo configs' objective is "mae"
    frames = 2 * mae.encoder.tubelet
    z = subject["image"].shape[0] // 2
    clip = (
        torch.from_numpy(take_window(subject["image"], z, 0, frames)).float().div(255)[None, None]
    )  # (1, 1, T, H, W)
    with torch.no_grad():
        _, pred, mask = mae.loss(clip, generator=torch.Generator().manual_seed(seed))
        recon = mae.fill_masked(clip, pred, mask)
    enc = mae.encoder
    mask_px = mask.float().reshape(1, *enc.grid(clip.shape), 1).repeat_interleave(enc.tubelet, 1)
    mask_px = mask_px.repeat_interleave(enc.patch_size, 2).repeat_interleave(enc.patch_size, 3)
    mae_figure(
        clip[0, 0].numpy(), mask_px[0, ..., 0].numpy(), recon[0, 0].clamp(0, 1).numpy(), path
    )


def draw_overlay(ft_ckpt: Path, subject: dict, path: Path) -> None:
    """Ground truth and prediction at ED and ES on three slices of subject."""
    meta = subject["meta"]
    model, frames, _ = load_finetune_checkpoint(ft_ckpt)
    pred = predict_study(model, subject["image"], frames)
    s = subject["image"].shape[0]
    slices = sorted({max(0, s // 4), s // 2, min(s - 1, 3 * s // 4)})
    overlay_figure(
        subject["image"],
        subject["label"],
        pred,
        [int(meta["ed"]), int(meta["es"])],
        slices,
        path,
    )


def _start(plan: DemoPlan) -> str:
    """Where fine-tuning started, in words."""
    if plan.pretrain_config is not None:
        return "starting from the backbone pretrained above"
    if str(plan.pretrained) == NO_WEIGHTS:
        return "from random weights (`--pretrained none`)"
    return f"starting from `{plan.pretrained}`"


def write_markdown(
    path: Path, report: dict, plan: DemoPlan, labels: int, seed: int, seconds: dict
) -> None:
    s = report["summary"]
    lines = [
        "# cmrfm demo report",
        "",
        f"Data: `{plan.source}`{f' from `{plan.root}`' if plan.root else ' (synthetic, embedded)'}; "
        f"seed {seed}; machine: {platform.machine()}, {torch.get_num_threads()} threads, "
        f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}.",
        f"Fine-tuned on {labels} labelled training subjects, {_start(plan)}, evaluated on the "
        f"{s['n_subjects']} subjects of the test split (never seen in pretraining or fine-tuning).",
        "",
        "| structure | Dice (mean over test subjects, ED and ES) |",
        "|---|---|",
        f"| LV cavity | {s['dice_lv']:.3f} |",
        f"| myocardium | {s['dice_myo']:.3f} |",
        f"| RV cavity | {s['dice_rv']:.3f} |",
        f"| **mean** | **{s['dice_mean']:.3f}** |",
        "",
        f"LV ejection fraction from the predicted masks: mean absolute error {s['lv_ef_mae']:.1f} "
        f"points, bias {s['lv_ef_bias']:+.1f} points.",
        "",
        "| subject | Dice LV ED | Dice LV ES | LV EF true | LV EF predicted |",
        "|---|---|---|---|---|",
    ]
    for r in report["subjects"]:
        lines.append(
            f"| {r['subject']} | {r.get('dice_lv_ed', np.nan):.3f} | {r.get('dice_lv_es', np.nan):.3f} "
            f"| {r['lv_ef_true']:.1f} | {r['lv_ef_pred']:.1f} |"
        )
    lines += [
        "",
        "Time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        "",
    ]
    if plan.pretrain_config is not None:
        lines += [
            "## MAE: input, masked input (90% tube masking), reconstruction",
            "",
            "![mae](mae.png)",
            "",
        ]
    lines += [
        "## Segmentation at ED and ES: ground truth and prediction",
        "",
        "![segmentation](segmentation.png)",
        "",
        "## Your own study",
        "",
        "The fine-tuned model is saved as a package in `model/`:",
        "`cmrfm predict STUDY.nii.gz --model model --out results` (or a DICOM folder).",
        "",
    ]
    path.write_text("\n".join(lines))
