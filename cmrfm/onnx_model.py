"""A fine-tuned segmenter as ONNX, and an int8 copy of it: `cmrfm export --onnx [--int8]`
writes them into the package, `cmrfm predict --runtime onnx|onnx-int8` runs them with
onnxruntime.

Files, beside config.json and model.safetensors:
- ``model.onnx``: the whole segmenter, clip (B, 1, frames, size, size) in [0, 1] -> logits
  (B, K, frames, size, size); the batch axis is dynamic, frames and size are the package's.
- ``model.int8.onnx``: ``model.onnx`` with dynamic int8 quantisation
  (onnxruntime.quantization.quantize_dynamic): int8 weights of every MatMul and Conv (or of the
  op types given), their inputs quantised to uint8 at run time, per tensor; the layers that
  make the logits stay fp32 (:func:`output_layers`). On this project's 2-core CPU int8 Convs
  (onnxruntime's ConvInteger) run slower than fp32 ones; int8 MatMuls run faster: a ViT
  package quantised on its MatMuls only is both faster and closer to torch
  (benchmarks/RESULTS.md, "ONNX and int8").

config.json gains an ``onnx`` object, one entry per file written: its sha256, the sha256 of the
weights it came from, the exporter and versions, and for model.onnx the largest logit
difference to torch measured at export. A runtime loads a file only when both hashes still hold.

The exporter is torch.onnx's TorchScript tracer (``dynamo=False``). The torch.export-based
exporter (torch's default since 2.9) matched torch as closely here, but needs onnxscript,
and took 4-6 times as long. (It also ran the model on fake tensors that foundation.vit then
cached as its sin-cos position tables, breaking the torch model in that process; the cache now
holds NumPy tables, and a test traces under FakeTensorMode.)
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cmrfm_io.files import sha256_file, usual_permissions, write_json_atomic
from foundation.names import CONFIG_NAME, WEIGHTS_NAME

ONNX_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
RUNTIMES = {"torch": None, "onnx": ONNX_NAME, "onnx-int8": INT8_NAME}  # --runtime -> file
CONFIG_KEY = "onnx"
OPSET = 17  # LayerNormalization is a single node from 17 on
PARITY_ATOL = 1e-4  # largest logit difference to torch an export may have (issue 14)
INPUT, OUTPUT = "clip", "logits"
INT8_OPS = ("MatMul", "Conv")  # what --int8 quantises (quantize_dynamic's op types)
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


# --- writing -----------------------------------------------------------------------------------


def export_onnx(
    folder: Path | str, *, int8: bool = False, int8_ops: Sequence[str] = INT8_OPS, seed: int = 0
) -> dict[str, Any]:
    """Write ``model.onnx`` (and with ``int8`` ``model.int8.onnx``, quantising the op types
    ``int8_ops``, some of INT8_OPS) into a fine-tuned package and record them in its
    config.json.

    The export is checked at once: torch and onnxruntime run the same two seeded random clips
    (a batch of two, where the trace saw one: the batch axis must be dynamic) and a largest
    logit difference over PARITY_ATOL is refused (ValueError naming the file).
    An int8 file left from other weights is deleted when only ``model.onnx`` is rewritten.

    Returns config.json's ``onnx`` object.
    """
    from finetune.package import load_finetuned

    unknown = sorted(set(int8_ops) - set(INT8_OPS))
    if unknown or not int8_ops:
        raise ValueError(f"int8 op types must be some of {list(INT8_OPS)}, got {list(int8_ops)}")
    folder = Path(folder)
    model, config = load_finetuned(folder)  # errors name the folder
    if config.get("task", "seg") != "seg":
        raise ValueError(
            f"{folder}: a {config['task']!r} model; --onnx exports segmenters ('seg') only"
        )
    frames, size = int(config["frames"]), int(config["preprocess"]["size"])
    weights = sha256_file(folder / WEIGHTS_NAME)
    path = folder / ONNX_NAME
    start = time.perf_counter()
    _trace_to_onnx(model, (1, 1, frames, size, size), path)
    seconds = time.perf_counter() - start
    generator = torch.Generator().manual_seed(seed)
    clips = torch.rand(2, 1, frames, size, size, generator=generator)  # (2, 1, T, H, W)
    with torch.no_grad():
        expected = model(clips).float().numpy()  # (2, K, T, H, W)
    found = run_session(session(path), clips.numpy())
    diff = float(np.abs(found - expected).max())
    if not diff <= PARITY_ATOL:  # NaN fails too
        path.unlink()
        raise ValueError(
            f"{path}: onnxruntime's logits differ from torch's by up to {diff:.3g} (more than "
            f"{PARITY_ATOL:g}); the export is not faithful and was removed"
        )
    classes = len(config.get("classes") or []) or 4
    records = dict(config.get(CONFIG_KEY) or {})
    records[ONNX_NAME] = _record(path, weights) | {
        "exporter": f"torch.onnx TorchScript exporter (dynamo=False), torch {torch.__version__}",
        "opset": OPSET,
        "input": {"name": INPUT, "shape": ["batch", 1, frames, size, size], "range": [0, 1]},
        "output": {"name": OUTPUT, "shape": ["batch", classes, frames, size, size]},
        "max_abs_logit_diff_vs_torch": diff,
        "export_seconds": round(seconds, 2),
    }
    if int8:
        records[INT8_NAME] = quantize_int8(path, folder / INT8_NAME, weights, int8_ops)
    elif INT8_NAME in records and records[INT8_NAME].get("weights_sha256") != weights:
        (folder / INT8_NAME).unlink(missing_ok=True)  # quantised from other weights: stale
        del records[INT8_NAME]
    config[CONFIG_KEY] = records
    write_json_atomic(folder / CONFIG_NAME, config)
    return records


def summary_lines(folder: Path, records: dict[str, Any]) -> list[str]:
    """One line per ONNX file written: size, sha256, and for model.onnx its logit difference to
    torch, for int8 the layers kept in fp32."""
    lines = []
    for name, record in records.items():
        line = (
            f"{Path(folder) / name}: {record['bytes'] / 1e6:.1f} MB, sha256 {record['sha256'][:12]}"
        )
        if "max_abs_logit_diff_vs_torch" in record:
            line += (
                f", largest logit difference to torch {record['max_abs_logit_diff_vs_torch']:.2g}"
            )
        if "kept_fp32" in record:
            line += f", {len(record['kept_fp32'])} output layer(s) kept fp32"
        lines.append(line)
    return lines


def quantize_int8(
    source: Path, out: Path, weights_sha256: str, ops: Sequence[str] = INT8_OPS
) -> dict[str, Any]:
    """``source`` (fp32 ONNX) -> ``out`` with dynamic int8 quantisation of the ``ops`` nodes,
    except the layers that make the logits (:func:`output_layers`), which stay fp32; the
    file's config record."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kept = output_layers(onnx.load(str(source), load_external_data=False))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs advice on the root logger
    try:
        quantize_dynamic(
            source, out, op_types_to_quantize=list(ops), nodes_to_exclude=kept,
            weight_type=QuantType.QInt8,
        )  # fmt: skip
    finally:
        root.setLevel(level)
    usual_permissions(out)
    return _record(out, weights_sha256) | {
        "from": source.name,
        "quantisation": "onnxruntime.quantization.quantize_dynamic: int8 weights (QInt8, per "
        "tensor), inputs quantised to uint8 at run time",
        "ops": list(ops),
        "kept_fp32": kept,
        "onnxruntime": onnxruntime.__version__,
    }


def output_layers(model: Any) -> list[str]:
    """Names of the weight layers (Conv, ConvTranspose, MatMul, Gemm) nearest the graph's
    outputs: every path back from an output stops at the first one.

    Quantising the layer that makes the logits moves them directly: a ViT package's largest
    mean Dice drop on 13 ACDC test subjects was 0.042 (RV at ES) with its 1x1 head quantised,
    0.003 without (benchmarks/RESULTS.md, "ONNX and int8").
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue  # a graph input or an initializer, or a node already walked
        seen.add(node.name)
        if node.op_type in WEIGHT_OPS:
            found.append(node.name)
        else:
            stack.extend(node.input)
    return sorted(found)


def _record(path: Path, weights_sha256: str) -> dict[str, Any]:
    return {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "weights_sha256": weights_sha256,  # model.safetensors it was made from
    }


def _trace_to_onnx(model: nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """Trace model on a zero clip of ``shape`` into ``path``, batch axis dynamic."""
    example = torch.zeros(shape)
    with warnings.catch_warnings():
        # The tracer's notes on Python branches over static shapes (frames and size are fixed
        # in the file; only the batch varies), on instance norm in eval mode (it normalises by
        # each input's own statistics either way) and on this exporter's deprecation: the
        # parity check after the export is the guard, not these.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    usual_permissions(path)


# --- running -----------------------------------------------------------------------------------


def session(path: Path | str, threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``path`` on ``threads`` threads (default: torch's, so
    OMP_NUM_THREADS=1 keeps both runtimes on one core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no notes on unused initialisers
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess: Any, clips: np.ndarray) -> np.ndarray:
    """Logits (B, K, T, H, W) float32 of clips (B, 1, T, H, W)."""
    x = np.ascontiguousarray(clips, dtype=np.float32)
    return sess.run([OUTPUT], {INPUT: x})[0]


class OnnxSegmenter(nn.Module):
    """An ONNX segmenter behind the torch module interface that finetune.evaluate.predict_study
    drives: forward(clip (B, 1, T, H, W)) -> logits (B, K, T, H, W) on the CPU.

    It holds one empty parameter so that ``next(model.parameters()).device`` says "cpu".
    """

    def __init__(self, path: Path | str, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = session(self.path, threads)
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        shape = self.session.get_inputs()[0].shape  # ["batch", 1, T, H, W]
        self.clip_shape = tuple(shape[1:])

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        if tuple(clip.shape[1:]) != self.clip_shape:
            raise ValueError(
                f"{self.path}: takes clips (B, {', '.join(map(str, self.clip_shape))}), got "
                f"{tuple(clip.shape)}; an ONNX model keeps the clip length and size it was "
                "exported with"
            )
        logits = run_session(self.session, clip.detach().cpu().numpy())
        return torch.from_numpy(logits)


def load_onnx(
    folder: Path | str,
    runtime: str = "onnx",
    threads: int | None = None,
    frames: int | None = None,
) -> tuple[OnnxSegmenter, dict[str, Any]]:
    """(OnnxSegmenter, config.json) of a package's ONNX file for ``runtime`` ("onnx" or
    "onnx-int8"). FileNotFoundError when the package has none (run `cmrfm export --onnx`);
    ValueError when the file or the weights changed since the export, or for a clip length
    ``frames`` other than the exported one."""
    from finetune.package import read_package_config

    if RUNTIMES.get(runtime) is None:
        onnx = [r for r, name in RUNTIMES.items() if name]
        raise ValueError(f"runtime {runtime!r} is not an ONNX runtime; choose one of {onnx}")
    folder = Path(folder)
    config = read_package_config(folder)  # errors name the folder
    name = RUNTIMES[runtime]
    path = folder / name
    record = (config.get(CONFIG_KEY) or {}).get(name)
    flag = "--int8" if name == INT8_NAME else "--onnx"
    if record is None or not path.is_file():
        raise FileNotFoundError(
            f"{path}: no {'int8 ' if name == INT8_NAME else ''}ONNX model in this package "
            f"(--runtime {runtime}); run `cmrfm export {flag} {folder}` first"
        )
    if sha256_file(path) != record.get("sha256"):
        raise ValueError(
            f"{path}: sha256 differs from config.json's record (changed after the export); "
            f"run `cmrfm export {flag} {folder}` again"
        )
    if sha256_file(folder / WEIGHTS_NAME) != record.get("weights_sha256"):
        raise ValueError(
            f"{path}: exported from other weights than {folder / 'model.safetensors'}; run "
            f"`cmrfm export {flag} {folder}` again"
        )
    model = OnnxSegmenter(path, threads).eval()
    if frames is not None and int(frames) != model.clip_shape[1]:
        raise ValueError(
            f"{path}: exported for clips of {model.clip_shape[1]} frames, not {frames}; leave "
            "out --frames, or use --runtime torch"
        )
    return model, config
