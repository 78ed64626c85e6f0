"""Fine-tuned model folders: model.safetensors (every weight of the system), config.json (how to
rebuild it, the preprocessing its inputs need, clip length, classes) and a README.md model card,
the fine-tuned counterpart of foundation.hub's backbone folders."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from cmrfm_io.constructor import constructor_arguments
from cmrfm_io.files import read_json, sha256_file, usual_permissions
from data_shards.preprocess import PreprocessConfig
from data_shards.record import LABEL_NAMES
from foundation.card import metrics_lines, weights_origin
from foundation.datasets import SYNTHETIC, dataset_lines, dataset_names, licence, write_licence
from foundation.names import CONFIG_NAME, SHA256_KEY, WEIGHTS_NAME
from foundation.released import resolve_pretrained

CARD_NAME = "README.md"
PACKAGE_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
FORMAT = "cmrfm-finetuned"
FORMAT_VERSION = 1
TASKS = ("seg", "ef", "cls")
# Constructor arguments that point at files of the training machine: the package's own weights
# replace them, so a loaded package never reads them.
FILE_ARGS = ("pretrained",)

INTENDED_USE = (
    "Research on cardiac MRI analysis: segmentation of cine short-axis studies into LV cavity, "
    "myocardium and RV cavity, and the volumes derived from it. **Not for clinical use**: it is "
    "not a medical device, has not been validated for diagnosis, treatment or any decision "
    "about a patient, and its outputs must not be used as such."
)


def init_args_of(model: nn.Module) -> dict[str, Any]:
    """A Lightning system's constructor arguments (its hparams, bookkeeping "_" keys dropped)."""
    hparams = getattr(model, "hparams", None)
    if hparams is None:
        raise TypeError(
            f"{type(model).__name__} has no hparams; pass init_args= (its constructor arguments)"
        )
    return {k: v for k, v in dict(hparams).items() if not str(k).startswith("_")}


def package_config(
    class_path: str,
    init_args: Mapping[str, Any],
    *,
    preprocess: Mapping[str, Any],
    frames: int,
    task: str = "seg",
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """config.json contents; file arguments (``pretrained``) set to None, preprocess checked."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if int(frames) < 1:
        raise ValueError(f"frames must be a positive clip length, got {frames}")
    base = base_model(init_args.get("pretrained"), init_args.get("backbone"))
    args = {k: (None if k in FILE_ARGS else v) for k, v in init_args.items()}
    pre = PreprocessConfig.from_dict(preprocess)  # fails early on a bad preprocessing
    if class_names is None and task == "seg":
        k = int(args.get("num_classes", 4))
        class_names = [LABEL_NAMES.get(c, f"class{c}") for c in range(k)]
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "task": task,
        "model": {"class_path": class_path, "init_args": args},
        "preprocess": pre.to_dict(),
        "frames": int(frames),
        "classes": list(class_names or []),
        "base_model": base,  # where fine-tuning started: None = from scratch
    }
    return json.loads(json.dumps(config))  # tuples -> lists; fails here if not JSON


def base_model(pretrained: str | Path | None, backbone: str | None) -> dict[str, Any] | None:
    """The weights fine-tuning started from, for lineage: the path as given, the architecture
    and the sha256 (a hub folder's recorded weights hash, a checkpoint file's own; a released
    model's name is its folder's); None for a start from scratch. A path that is gone by now keeps its name, with sha256 None."""
    try:
        path = resolve_pretrained(pretrained)
    except FileNotFoundError:  # a released name no longer here: keep the name
        path = Path(str(pretrained))
    if path is None:
        return None
    record: dict[str, Any] = {"source": str(pretrained), "architecture": backbone, "sha256": None}
    if (path / CONFIG_NAME).is_file():
        hub = json.loads((path / CONFIG_NAME).read_text())
        record |= {"architecture": hub.get("architecture", backbone),
                   "sha256": hub.get(SHA256_KEY), "kind": "hub folder"}  # fmt: skip
    elif path.is_file():
        record |= {"sha256": sha256_file(path), "kind": "checkpoint"}
    return record


def save_finetuned(
    model: nn.Module,
    out: Path,
    *,
    preprocess: Mapping[str, Any],
    frames: int,
    task: str = "seg",
    class_names: Sequence[str] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    datasets: Sequence[str] | None = None,
    init_args: Mapping[str, Any] | None = None,
    class_path: str | None = None,
) -> Path:
    """Write model.safetensors, config.json, README.md (and LICENSE.md for third-party data).

    Args:
        model: the fine-tuned system, e.g. a ``finetune.system.SegFinetuner``; it must be
            rebuilt by ``class_path(**init_args)`` (default: its class and its hparams).
        out: the folder to write (created).
        preprocess: PreprocessConfig fields, as the training shards' manifest.json records them.
        frames: clip length the model was trained on.
        task: "seg", "ef" or "cls".
        class_names: output classes by label value; default from num_classes (background, lv,
            myo, rv, ...).
        training: what it learnt from (labels, seed, steps, protocol, ...), for the card.
        metrics: evaluation results for the card.
        datasets: names of the datasets it saw (ACDC, M&Ms-2, phantom, ...), for licence terms.
    """
    from safetensors.torch import save_model

    class_path = class_path or f"{type(model).__module__}.{type(model).__qualname__}"
    args = init_args_of(model) if init_args is None else dict(init_args)
    config = package_config(
        class_path, args, preprocess=preprocess, frames=frames, task=task, class_names=class_names
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # save_model drops duplicate names of shared tensors (safetensors refuses aliasing).
    save_model(model, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    usual_permissions(out / WEIGHTS_NAME)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
    names = dataset_names(datasets or [])
    (out / CARD_NAME).write_text(card_text(config, names, training, metrics))
    write_licence(out, names)
    return out


def read_package_config(folder: Path) -> dict[str, Any]:
    """A package's config.json, checked; errors name the folder and what is missing or wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: model folder not found (write one with `cmrfm export FINETUNE_CKPT OUT`)"
        )
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: not a fine-tuned model folder, missing {', '.join(missing)} (write one "
            "with `cmrfm export FINETUNE_CKPT OUT`)"
        )
    path = folder / CONFIG_NAME
    config = read_json(path)  # ValueError naming the file when it is not JSON
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        hint = " (a backbone folder: fine-tune it first)" if found == "cmrfm-backbone" else ""
        raise ValueError(f"{path}: format {found!r} is not {FORMAT!r}{hint}")
    if int(config.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: version {config['version']} is newer than this cmrfm reads "
            f"({FORMAT_VERSION}); upgrade cmrfm"
        )
    model = config.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("class_path"), str):
        raise ValueError(f"{path}: needs 'model': {{'class_path': ..., 'init_args': {{...}}}}")
    if not isinstance(model.get("init_args", {}), dict):
        raise ValueError(f"{path}: model.init_args must be an object")
    for key in ("preprocess", "frames"):
        if key not in config:
            raise ValueError(f"{path}: lacks {key!r}")
    PreprocessConfig.from_dict(config["preprocess"], str(path))
    return config


def _card_arguments(class_path: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """args as the class's ``card_arguments`` shows them (all, for a class without one or one
    that cannot be imported here)."""
    try:
        cls = _import_class(class_path, Path(CONFIG_NAME))
    except ValueError:
        return dict(args)
    shown = getattr(cls, "card_arguments", None)
    return shown(dict(args)) if callable(shown) else dict(args)


def load_finetuned(folder: Path | str, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, config.json) of a package; weights loaded strictly from safetensors
    (nothing unpickled); errors name the folder and what does not fit."""
    from safetensors.torch import load_model

    folder = Path(folder)
    config = read_package_config(folder)
    cls = _import_class(config["model"]["class_path"], folder / CONFIG_NAME)
    args = dict(config["model"].get("init_args") or {})
    unknown = sorted(set(args) - set(constructor_arguments(cls)))
    if unknown:
        raise ValueError(
            f"{folder / CONFIG_NAME}: {cls.__name__} takes no argument(s) {unknown}; the folder "
            "was written by another cmrfm version"
        )
    try:
        model = cls(**args)
    except Exception as err:
        raise ValueError(
            f"{folder / CONFIG_NAME}: cannot build {cls.__name__} from init_args "
            f"({type(err).__name__}: {err})"
        ) from err
    try:
        load_model(model, str(folder / WEIGHTS_NAME), strict=True, device=device)
    except Exception as err:  # missing/unexpected keys, shapes, or a damaged file
        raise ValueError(
            f"{folder / WEIGHTS_NAME}: weights do not fit config.json's model "
            f"({type(err).__name__}: {err})"
        ) from err
    return model.to(device).eval(), config


def _import_class(class_path: str, where: Path) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{where}: model class {class_path!r} cannot be imported") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{where}: {class_path!r} is not a torch module class")
    return cls


# --- the model card ----------------------------------------------------------------------------


def _front_matter(datasets: Sequence[str], task: str, base: Mapping[str, Any] | None) -> str:
    """YAML the Hub parses; ``base_model`` names the hub folder fine-tuning started from (its
    name, as published); absent from scratch or from a training checkpoint, which is no hub
    model (the card's text gives its path and sha256)."""
    from huggingface_hub import ModelCardData

    tags = ["cmrfm", "cardiac-mri", "mri", "medical-imaging", "pytorch", "safetensors"]
    tags.append({"seg": "image-segmentation", "ef": "regression", "cls": "classification"}[task])
    pipeline = {"seg": "image-segmentation", "ef": None, "cls": "image-classification"}[task]
    data = ModelCardData(
        **licence(datasets),
        tags=tags,
        datasets=[d.lower() for d in datasets],
        pipeline_tag=pipeline,
        library_name="cmrfm",
        base_model=Path(base["source"]).name if base and base.get("kind") == "hub folder" else None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def _table(rows: Mapping[str, Any], head: tuple[str, str]) -> list[str]:
    def cell(v: Any) -> str:
        return (v if isinstance(v, str) else json.dumps(v, default=str)).replace("|", "\\|")

    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {k} | {cell(v)} |" for k, v in rows.items())]  # fmt: skip


def _started_from(base: Mapping[str, Any] | None) -> str:
    if base is None:
        return "Fine-tuned from scratch (no pretrained weights)."
    return f"Fine-tuned from pretrained weights: {weights_origin(base)}."


def card_text(
    config: Mapping[str, Any],
    datasets: Sequence[str],
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> str:
    """README.md of a fine-tuned package: use, inputs, model, data, metrics, licences, limits."""
    args = config["model"]["init_args"]
    shown = _card_arguments(config["model"]["class_path"], args)
    task, frames = config["task"], config["frames"]
    seen = ", ".join(datasets) if datasets else "unidentified data"
    arch = args.get("arch", "unetr")
    what = {"seg": "segmentation", "ef": "ejection-fraction regression", "cls": "diagnosis"}[task]
    lines = [
        _front_matter(datasets, task, config.get("base_model")),
        f"# cmrfm fine-tuned {what} model",
        "",
        f"{config['model']['class_path']} ({arch} on backbone {args.get('backbone', '?')}), "
        f"fine-tuned on {seen}; clips of {frames} frames.",
        "",
        _started_from(config.get("base_model")),
        "",
        "## How to use",
        "",
        "```bash",
        "cmrfm predict STUDY.nii.gz --model THIS_FOLDER --out results/  # or a DICOM folder",
        "```",
        "",
        "```python",
        "from finetune.package import load_finetuned",
        "",
        'model, config = load_finetuned("THIS_FOLDER")  # eval mode',
        "# clip: float (B, 1, frames, size, size) in [0, 1], preprocessed as below",
        "logits = model(clip)  # (B, classes, frames, size, size)",
        "```",
        "",
        "## Input and preprocessing",
        "",
        *_table(config["preprocess"], ("setting", "value")),
        "",
        f"Classes by label value: {config.get('classes')}.",
        "",
        "## Model (config.json `model.init_args`)",
        "",
        *_table(shown, ("argument", "value")),
        *(
            []
            if shown == args
            else [
                "",
                f"Not shown: {', '.join(sorted(set(args) - set(shown)))}"
                f" ({arch} does not use them).",
            ]
        ),
        "",
        "## Training",
        "",
        *(_table(dict(training), ("item", "value")) if training else ["Not recorded."]),
        "",
        "## Metrics",
        "",
        *(metrics_lines(metrics) if metrics else ["None reported."]),
        "",
        "## Data licences and citations",
        "",
        *dataset_lines(datasets),
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Limitations",
        "",
        f"- Fine-tuned on few labelled subjects ({seen}): few centres, vendors and pathologies. "
        "Expect a domain shift on other scanners and populations; validate on your own data.",
        "- Inputs must be preprocessed as above (`cmrfm predict` does it and maps the labels back"
        " to the study's own grid).",
    ]
    if SYNTHETIC in datasets:
        lines.append("- Part or all of the training data is a synthetic phantom, not real MRI.")
    return "\n".join(lines) + "\n"
