"""Model card (README.md) of a hub folder: which data, objective, steps, config, metrics, the
datasets' terms and citations (from foundation.datasets), intended use and limits."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from foundation.datasets import SYNTHETIC, dataset_lines, licence
from foundation.names import AXES, MODALITIES, SHA256_KEY, WEIGHTS_NAME

INTENDED_USE = (
    "Research on cardiac MRI representation learning: a backbone to fine-tune or probe for "
    "segmentation, function or tissue characterisation on research data. **Not for clinical "
    "use**: it is not a medical device, has not been validated for diagnosis, treatment or any "
    "decision about a patient, and its outputs must not be used as such."
)

FEWSHOT_HEADING = "## Few-shot segmentation"
NO_FEWSHOT = "No few-shot benchmark was recorded."


def _front_matter(
    datasets: Sequence[str],
    objective: str | None,
    unet: bool = False,
    fewshot: Sequence[Mapping[str, Any]] | None = None,
    name: str = "cmrfm backbone",
) -> str:
    """YAML front matter the Hub parses: licence, tags, datasets, ``library_name: cmrfm`` and,
    with few-shot results, a ``model-index`` of this backbone's fine-tuned mean Dice."""
    from huggingface_hub import ModelCardData

    network = "unet" if unet else "vision-transformer"
    tags = ["cmrfm", "cardiac-mri", "mri", "medical-imaging", network, "pytorch"]
    tags += ["safetensors", "self-supervised"]
    if objective and "mae" in objective:
        tags.append("masked-autoencoder")
    if objective and "contrastive" in objective:
        tags.append("contrastive-learning")
    results = eval_results(fewshot or [])
    data = ModelCardData(
        **licence(datasets),
        library_name="cmrfm",
        tags=tags,
        datasets=[d.lower() for d in datasets],
        pipeline_tag="image-feature-extraction",
        model_name=name if results else None,
        eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def eval_results(rows: Sequence[Mapping[str, Any]], method: str = "pretrained") -> list[Any]:
    """Few-shot summary rows (with ``dataset`` and ``split``, cmrfm.card_facts) -> the Hub's
    EvalResult entries: mean Dice of segmenters fine-tuned from this backbone, one per N."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="image-segmentation",
            dataset_type=r.get("dataset") or "unrecorded",
            dataset_name=f"{r.get('dataset') or 'unrecorded'} ({r.get('split') or 'split unrecorded'})",
            dataset_split=r.get("split") or None,
            metric_type="dice",
            metric_value=round(float(r["mean"]), 4),
            metric_name=f"mean Dice, fine-tuned with N={r['labels']} labelled subjects",
            metric_config=f"labels={r['labels']}, seeds={r.get('runs', '?')}",
        )
        for r in rows
        if r.get("metric") == "dice_mean" and r.get("method") == method
    ]


def _trained_on(manifest: Mapping[str, Any]) -> str:
    """The subjects training read, with its splits ("87 (train, val)"); "?" when not recorded."""
    n, splits = manifest.get("trained_on"), manifest.get("splits")
    if n is None:
        return "?"
    return f"{n} ({', '.join(splits)})" if splits else f"{n} (all splits)"


def _table(rows: Iterable[tuple[Any, Any]], head: tuple[str, str] = ("", "")) -> list[str]:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows]
    return lines


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text.replace("|", "\\|")


def card_text(
    config: Mapping[str, Any],
    *,
    data: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    probe: Sequence[Mapping[str, Any]] | None = None,
    fewshot: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """README.md for a hub folder from its config.json contents.

    data: {"datasets": [names], "manifests": [{"path", "sha256", "source", "datasets",
    "subjects", "trained_on", "splits", "samples", "modalities"}]}; training: {"objective", "steps", "epochs", "hyper_parameters",
    ...}; metrics: {name: value}; probe: rows of the online probe (finetune.probe's probe.csv:
    step, dice_mean, ...), shown with the folder's probe.png; fewshot: rows of a few-shot
    benchmark's summary.csv (metric, method, labels, n, mean, std, runs). Missing parts are
    said to be missing, not left out.
    """
    data, training, metrics = dict(data or {}), dict(training or {}), dict(metrics or {})
    datasets = list(data.get("datasets") or [])
    arch = config.get("architecture") or "CardiacViT"
    args, pre = config["model_args"], config["preprocess"]
    objective = training.get("objective")
    seen = ", ".join(datasets) if datasets else "unidentified data"
    unet = "channels" in args  # foundation.unet.CardiacUNet
    start = training.get("started_from")  # pretraining continued from other weights
    origin = f", continuing from {weights_origin(start)}" if start else ""
    lines = [
        _front_matter(datasets, objective, unet, fewshot, f"{arch} (cmrfm)"),
        f"# {arch}: a cardiac MRI backbone (cmrfm)",
        "",
        f"{_network(args)} pretrained with **{objective or 'an unrecorded objective'}** for "
        f"**{training.get('steps', 'an unrecorded number of')} steps** on {seen}{origin}.",
        "",
        "## How to use",
        "",
        "```python",
        "from foundation.hub import from_pretrained",
        "",
        'model = from_pretrained("THIS_REPO_OR_FOLDER")  # eval mode; model.hub_config = config.json',
        "# clip: float (B, 1, T, H, W) in [0, 1], preprocessed as below",
        *(_UNET_USAGE if unet else _VIT_USAGE),
        "```",
        "",
        _weights_line(config.get(SHA256_KEY)),
        "",
        "## Input and preprocessing",
        "",
        "Inputs must be prepared as in training (`cmrfm shard` does this):",
        "",
        *_table(pre.items(), ("setting", "value")),
        "",
        *(
            []
            if unet
            else [
                f"Modality rows of the embedding: {list(config.get('modalities', MODALITIES))}; "
                f"axis rows: {list(config.get('axes', AXES))}.",
                "",
            ]
        ),
        "## Architecture (config.json `model_args`)",
        "",
        *_table(args.items(), ("argument", "value")),
        "",
        "## Training data",
        "",
        f"Datasets: {seen}.",
        "",
    ]
    manifests = data.get("manifests") or []
    if manifests:
        lines += [
            "| manifest sha256 | dataset | source | subjects | trained on | samples | modalities |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| `{m.get('sha256', '?')}` | {', '.join(m.get('datasets') or []) or '?'} | "
            f"{m.get('source', '?')} | {m.get('subjects', '?')} | {_trained_on(m)} | "
            f"{m.get('samples', '?')} | {', '.join(m.get('modalities', [])) or '?'} |"
            for m in manifests
        ]
    else:
        lines.append("No data manifest was recorded for this model.")
    lines += ["", "## Objective and training", ""]
    facts = [(k, weights_origin(v) if k == "started_from" else v)
             for k, v in training.items() if k != "hyper_parameters"]  # fmt: skip
    lines += _table(facts, ("item", "value")) if facts else ["Not recorded."]
    if training.get("hyper_parameters"):
        hparams = json.dumps(training["hyper_parameters"], indent=1, sort_keys=True, default=str)
        lines += ["", "Hyper-parameters:", "", "```json", hparams, "```"]
    lines += ["", "## Online probe", ""]
    lines += _probe_lines(probe) if probe else ["No probe was recorded for this model."]
    lines += ["", FEWSHOT_HEADING, ""]
    lines += _fewshot_lines(fewshot) if fewshot else [NO_FEWSHOT]
    lines += ["", "## Metrics", ""]
    lines += metrics_lines(metrics) if metrics else ["None reported."]
    lines += ["", "## Data licences and citations", "", *dataset_lines(datasets), ""]
    lines += ["## Intended use", "", INTENDED_USE, "", "## Limitations", ""]
    lines += _limitations(datasets, pre, embeddings=not unet)
    return "\n".join(lines) + "\n"


def weights_origin(base: Mapping[str, Any]) -> str:
    """Where a model's training started (finetune.package.base_model's record), for a card:
    `source` (kind, architecture, sha256)."""
    sha = f"sha256 `{base['sha256']}`" if base.get("sha256") else "sha256 not recorded"
    arch = base.get("architecture") or "architecture not recorded"
    return f"`{base['source']}` ({base.get('kind', 'not found')}, {arch}, {sha})"


_VIT_USAGE = (
    'tokens = model.forward_features(clip, modality=["cine"] * B, axis=["time"] * B)',
    "# tokens: (B, T/tubelet * H/patch * W/patch, width), t-major order",
)
_UNET_USAGE = (
    "features = model(clip)  # (B, F, T, H, W): per-pixel features, frame by frame",
    "# a segmenter asks for features=classes (arch: dense): all but the top layer load",
)


def _network(args: Mapping[str, Any]) -> str:
    """One phrase for the architecture config.json's model_args describe."""
    if "channels" in args:
        return (
            f"MONAI's 2D U-Net applied frame by frame (channels {args['channels']}, "
            f"{args['num_res_units']} residual units, {args['features']} output features)"
        )
    return (
        f"A spatiotemporal ViT ({args['embed_dim']} wide, {args['depth']} blocks, "
        f"{args['num_heads']} heads; tubelets of {args['tubelet']} x {args['patch_size']} x "
        f"{args['patch_size']})"
    )


def _probe_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The probe's mean Dice by pretraining step, and its plot (probe.png in the folder)."""
    lines = [
        "A linear head fitted on the frozen backbone's features of a few labelled subjects and "
        "scored on held-out ones (`finetune.probe`; step 0 is the random initialisation):",
        "",
        "| step | " + " | ".join(str(int(r["step"])) for r in rows) + " |",
        "|---|" + "---|" * len(rows),
        "| probe Dice | " + " | ".join(f"{float(r['dice_mean']):.3f}" for r in rows) + " |",
        "",
        "![probe Dice against pretraining step](probe.png)",
    ]
    return lines


def with_fewshot(text: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """A card (README.md text) with its few-shot section and Hub ``model-index`` rebuilt from
    ``rows`` (a few-shot summary.csv): a released folder gains its benchmark, weights untouched."""
    from huggingface_hub import ModelCard

    card = ModelCard(text)
    head, heading, rest = card.text.partition(f"\n{FEWSHOT_HEADING}\n")
    if not heading:
        raise ValueError(f"the card has no {FEWSHOT_HEADING!r} section to fill")
    _, _, tail = rest.partition("\n## ")
    title = next((ln[2:].split(":")[0] for ln in head.splitlines() if ln.startswith("# ")), "")
    results = eval_results(rows)
    card.data.eval_results = results or None
    card.data.model_name = f"{title or 'cmrfm backbone'} (cmrfm)" if results else None
    section = ["", *(_fewshot_lines(rows) if rows else [NO_FEWSHOT]), "", ""]
    return f"---\n{card.data.to_yaml()}\n---\n{head}{heading}" + "\n".join(section) + "## " + tail


def _fewshot_lines(rows: Sequence[Mapping[str, Any]], metric: str = "dice_mean") -> list[str]:
    """Mean ± std over seeds of ``metric`` by method (rows) and labelled subjects (columns)."""
    chosen = [r for r in rows if r["metric"] == metric]
    labels = sorted(
        {r["labels"] for r in chosen}, key=lambda n: (n == "all", int(n) if n.isdigit() else 0)
    )
    methods = list(dict.fromkeys(r["method"] for r in chosen))
    cell = {(r["method"], r["labels"]): r for r in chosen}

    def show(method: str, n: str) -> str:
        r = cell.get((method, n))
        if r is None:
            return "–"
        # one run has no spread: an empty std (summaries before 2026-12-05 wrote 0 for it)
        one_run = str(r.get("runs", "")) == "1"
        std = float("nan") if one_run or r.get("std") in (None, "") else float(r["std"])
        return f"{float(r['mean']):.3f}" + ("" if std != std else f" ± {std:.3f}")

    where = next(
        (f" on {r['dataset']} ({r.get('split') or '?'})" for r in chosen if r.get("dataset")), ""
    )
    lines = [f"{metric}{where} (mean ± std over seeds) by labelled training subjects N:", ""]
    lines += ["| method | " + " | ".join(f"N = {n}" for n in labels) + " |",
              "|---|" + "---|" * len(labels)]  # fmt: skip
    lines += ["| " + m + " | " + " | ".join(show(m, n) for n in labels) + " |" for m in methods]
    return lines


def _weights_line(sha256: str | None) -> str:
    if sha256 is None:
        return f"No sha256 of `{WEIGHTS_NAME}` was recorded; loading it cannot verify it."
    return (
        f"`{WEIGHTS_NAME}` sha256: `{sha256}` (config.json `{SHA256_KEY}`; `from_pretrained` "
        "refuses a file that does not match)."
    )


def _limitations(
    datasets: Sequence[str], pre: Mapping[str, Any], embeddings: bool = True
) -> list[str]:
    unseen = [m for m in MODALITIES if m not in set(pre.get("modalities") or [])]
    unseen += [f"{a} as the third axis" for a in AXES if a not in set(pre.get("axes") or [])]
    lines = [
        f"- Pretrained on a small number of public datasets ({', '.join(datasets) or 'unidentified'})"
        ": few centres, vendors, field strengths and pathologies. Expect a domain shift on other "
        "scanners, protocols and populations; validate on your own data.",
        "- Features are only meaningful for inputs preprocessed as above (spacing, crop, intensity"
        " percentiles, frames, value range).",
        "- Self-supervised features: downstream accuracy depends on the fine-tuning data and head.",
    ]
    if unseen and embeddings:
        lines.append(
            f"- Never saw {', '.join(unseen)} during training: those rows of the modality/axis "
            "embeddings are untrained."
        )
    if SYNTHETIC in datasets:
        lines.append("- Part or all of the training data is a synthetic phantom, not real MRI.")
    return lines


_AGREEMENT = ("n", "mae", "bias", "sd", "loa_low", "loa_high", "r")  # finetune.metrics' stats


def metrics_lines(metrics: Mapping[str, Any]) -> list[str]:
    """--card-metrics as tables a reader takes in: an evaluate summary's Dice and HD95 by
    structure (ED, ES, both), its clinical indices by agreement statistic, then any other
    values; a plain mapping of a few values stays one two-column table."""
    rest = dict(metrics)
    structures = [k[len("dice_") :] for k in metrics
                  if k.startswith("dice_") and f"{k}_ed" in metrics]  # fmt: skip
    lines: list[str] = []
    if structures:
        lines += ["| structure | Dice ED | Dice ES | Dice | HD95 ED (mm) | HD95 ES (mm) | HD95 (mm) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for st in structures:
            keys = [f"{m}_{st}{p}" for m in ("dice", "hd95") for p in ("_ed", "_es", "")]
            lines.append(f"| {st} | " + " | ".join(_number(rest.pop(k, None)) for k in keys) + " |")
        lines.append("")
    indices = [k[: -len("_mae")] for k in metrics
               if k.endswith("_mae") and all(f"{k[:-4]}_{s}" in metrics for s in _AGREEMENT)]  # fmt: skip
    if indices:
        lines += ["| index | " + " | ".join(_AGREEMENT) + " |", "|---|" + "---|" * len(_AGREEMENT)]
        for index in indices:
            cells = [_number(rest.pop(f"{index}_{s}")) for s in _AGREEMENT]
            lines.append(f"| {index} | " + " | ".join(cells) + " |")
        lines.append("")
    if rest:
        cells = [(k, _number(v) if isinstance(v, float) else v) for k, v in rest.items()]
        lines += _table(cells, ("metric", "value"))
    return lines


def _number(value: Any) -> str:
    """A table cell: floats to 3 decimals, None and NaN as '–'."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else _cell(value)
