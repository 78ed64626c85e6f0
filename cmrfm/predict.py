"""`cmrfm predict`: segment one study (a NIfTI file or a DICOM series folder) with a fine-tuned
model folder, and write the label map in the study's own grid, volumes, the volume curves over
the cycle (cmrfm.cycle), an overlay sheet and a curve plot (cmrfm.figures).

The study is read and its label map written by cmrfm.study. The model's preprocessing
(config.json) is applied as in training: canonical orientation, in-plane resampling, a centred
crop and uint8 intensities; data_shards.restore maps the prediction back onto the study's grid.
Nothing from a DICOM header that identifies a person reaches an output: the outputs are named
"study", and only geometry is read. The exceptions are a DICOM study's SEG and SR
(cmrfm.dicom_out), which belong to the patient and carry the source's references, unless
``deidentify``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrfm.cycle import (
    CURVE_FIELDS,
    choose_phases,
    curve_rows,
    cycle_summary,
)
from cmrfm.quality import quality_report
from cmrfm.study import DICOM_NAME, Study, read_study, write_labels
from data_shards.preprocess import PreprocessConfig, preprocess
from data_shards.record import INFARCT, LV, MVO, MYO, RV, Subject
from data_shards.restore import restore_labels
from data_shards.volumes import volumes_ml
from finetune.metrics import clinical_indices, scar_extent
from foundation.names import CONFIG_NAME

CSV_FIELDS = ("ventricle", "edv_ml", "esv_ml", "sv_ml", "ef_percent", "mass_g", "ed_frame", "es_frame")  # fmt: skip


def prepare(study: Study, config: Any) -> Subject:
    """The study on the model's grid (uint8 (S, T, size, size)); meta records how to undo it."""
    subject = Subject(study.name, study.image, None, study.spacing, dict(study.geometry))
    return preprocess(subject, config)


# --- volumes -----------------------------------------------------------------------------------


def ventricular_volumes(
    label_map: np.ndarray,
    spacing: tuple[float, float, float],
    ed: int | None = None,
    es: int | None = None,
) -> dict[str, Any]:
    """LV/RV EDV, ESV, SV (ml), EF (%) and LV mass (g) from label_map (S, T, H, W), the volume
    curves (ml per frame) and the reason for each index that is None (``unavailable``).

    ED and ES default to the frames of largest and smallest LV cavity volume
    (`cmrfm.cycle.choose_phases`); with one frame both are that frame, and SV and EF are
    undefined (None).
    """
    t = label_map.shape[1]
    lv, rv = volumes_ml(label_map, spacing, LV), volumes_ml(label_map, spacing, RV)
    myo = volumes_ml(label_map, spacing, MYO)
    chosen = choose_phases(lv, ed, es)  # ValueError for a frame outside the study
    if ed is not None or es is not None:
        rule = "given"
    elif t == 1:
        rule = "one frame: volumes of that frame; SV and EF need a cine"
    else:
        rule = "ED: largest LV cavity volume, ES: smallest"
    found = clinical_indices(label_map, spacing, chosen["ed"], chosen["es"], rv=True)
    one = t == 1
    unavailable = {}

    def indices(side: str) -> dict[str, float | None]:
        values = {
            "edv_ml": found[f"{side}_edv"],
            "esv_ml": found[f"{side}_esv"],
            "sv_ml": None if one else found[f"{side}_sv"],
            "ef_percent": None if one else _finite(found[f"{side}_ef"]),
        }
        for key in ("sv_ml", "ef_percent"):
            if values[key] is None:
                unavailable[f"{side}.{key}"] = (
                    "one frame: SV and EF need a cine" if one else f"no {side.upper()} at ED"
                )
        return values

    return {
        "phases": {**chosen, "n_frames": t, "rule": rule},
        "lv": {**indices("lv"), "mass_g": found["lv_mass"]},
        "rv": indices("rv"),
        "per_frame_ml": {"lv": lv.tolist(), "myo": myo.tolist(), "rv": rv.tolist()},
        "unavailable": unavailable,
    }


def scar_volumes(label_map: np.ndarray, spacing: tuple[float, float, float], frame: int) -> dict:
    """LGE scar at one frame of label_map (S, T, H, W): infarct (MVO included) and MVO in ml and as
    % of the LV myocardium (`finetune.metrics.scar_extent`)."""
    infarct, mvo = (float(volumes_ml(label_map, spacing, c)[frame]) for c in (INFARCT, MVO))
    extent = {k: _finite(v) for k, v in scar_extent(label_map, frame).items()}
    return {"frame": frame, "infarct_ml": infarct + mvo, "mvo_ml": mvo, **extent}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --- writing -----------------------------------------------------------------------------------


def finite(value: Any) -> Any:
    """value with every NaN or infinite float (a volume of unknown slice spacing, say) as None:
    JSON has no NaN, and a reader should see "unknown", not a parse error."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_volumes(volumes: dict[str, Any], out: Path) -> tuple[Path, Path, Path]:
    """volumes.json (everything), volumes.csv (one row per ventricle) and curves.csv (one row
    per frame: `cmrfm.cycle.curve_rows`)."""
    json_path, csv_path, curves_path = (
        out / n for n in ("volumes.json", "volumes.csv", "curves.csv")
    )
    json_path.write_text(json.dumps(finite(volumes), indent=1, allow_nan=False) + "\n")
    phases = volumes["phases"]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for ventricle in ("lv", "rv"):
            row = {k: volumes[ventricle].get(k) for k in CSV_FIELDS[1:6]}
            writer.writerow(
                {"ventricle": ventricle, **row, "ed_frame": phases["ed"], "es_frame": phases["es"]}
            )
    with curves_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(curve_rows(volumes["per_frame_ml"], volumes["cycle"], phases))
    return json_path, csv_path, curves_path


# --- the command -------------------------------------------------------------------------------


class ModelError(ValueError):
    """The model folder's network cannot be built (weights missing, truncated or mismatched):
    no study can be segmented with it, so callers stop rather than go on to the next study."""


@dataclass
class Predictor:
    """A fine-tuned segmenter loaded once, with what its config.json says about its input.

    The config is read and checked at once; a torch network is built on first use of
    ``model``, after the first study has been read, so work starts before its seconds of
    imports (Lightning, MONAI, timm)."""

    folder: Path
    config: dict[str, Any]
    preprocess: PreprocessConfig
    frames: int
    num_classes: int
    runtime: str = "torch"  # or "onnx", "onnx-int8": cmrfm.onnx_model.OnnxSegmenter
    network: torch.nn.Module | None = None

    @classmethod
    def load(
        cls, model_dir: Path | str, frames: int | None = None, runtime: str = "torch"
    ) -> Predictor:
        """Errors name the folder and what is wrong with it (finetune.package.read_package_config,
        cmrfm.onnx_model.load_onnx)."""
        from finetune.package import read_package_config

        network = None
        if runtime == "torch":
            config = read_package_config(Path(model_dir))
        else:
            from cmrfm.onnx_model import load_onnx

            network, config = load_onnx(Path(model_dir), runtime, frames=frames)
        if config.get("task", "seg") != "seg":
            raise ValueError(
                f"{model_dir}: a {config['task']!r} model; predict needs a 'seg' model"
            )
        pre = PreprocessConfig.from_dict(config["preprocess"], str(Path(model_dir) / CONFIG_NAME))
        num_classes = len(config.get("classes") or []) or 4
        return cls(
            Path(model_dir), config, pre, int(frames or config["frames"]), num_classes,
            runtime, network,
        )  # fmt: skip

    @property
    def model(self) -> torch.nn.Module:
        """The network (built once, on first use); ModelError when it cannot be."""
        if self.network is None:
            from finetune.package import load_finetuned

            try:
                self.network, _ = load_finetuned(self.folder)
            except (OSError, ValueError, RuntimeError, KeyError) as error:
                raise ModelError(str(error)) from error
        return self.network


def predict(
    study_path: Path | str,
    model: Path | str | Predictor,
    out: Path | str,
    *,
    frames: int | None = None,
    batch: int = 16,
    ed: int | None = None,
    es: int | None = None,
    affine_space: str | None = None,
    deidentify: bool = False,
) -> dict[str, Any]:
    """Segment a study and write ``<name>_seg.nii.gz``, volumes.json/.csv, curves.csv,
    overlay.png and curves.png (not for one frame: ``unavailable`` in volumes.json says so).

    model: a model folder, or a Predictor already loaded (to segment many studies with one;
    its frames then stand and `frames` is not read).
    A DICOM study also gets seg.dcm (seg_es.dcm) and sr.dcm, with the source's patient and
    study references, or none with ``deidentify`` (cmrfm.dicom_out).
    Returns volumes.json's contents (with the output paths and timings in seconds).
    """
    clock = {"_start": time.perf_counter()}
    loaded = model if isinstance(model, Predictor) else Predictor.load(model, frames)
    _lap(clock, "load_config")
    study = read_study(study_path, affine_space)  # the work starts before the heavy imports
    _lap(clock, "read")
    prepared = prepare(study, loaded.preprocess)
    _lap(clock, "preprocess")
    network = loaded.model  # built on first use: Lightning, MONAI (ModelError if it cannot be)
    from cmrfm.dicom_out import write_dicom_outputs
    from cmrfm.figures import cycle_figure, write_overlay
    from finetune.evaluate import predict_study

    _lap(clock, "load_model")
    pred, entropy = predict_study(  # (S, T, H, W) label map, (S, T) uncertainty
        network, prepared.image, loaded.frames, batch=batch, entropy=True
    )
    _lap(clock, "model")
    label_map = restore_labels(pred, prepared.meta, loaded.num_classes)
    _lap(clock, "restore")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seg_path = write_labels(study, label_map, out)
    found = ventricular_volumes(label_map, study.spacing, ed, es)
    unavailable = found.pop("unavailable")
    cycle, missing = cycle_summary(found["per_frame_ml"]["lv"], study.times, found["phases"])
    volumes = {
        "study": study.name,
        "input": study.kind,
        "shape_stwh": [int(n) for n in study.image.shape],
        "spacing_mm": [_finite(float(v)) for v in study.spacing],
        "model": {
            "folder": loaded.folder.resolve().name,
            "frames": loaded.frames,
            "classes": loaded.config.get("classes"),
            "runtime": loaded.runtime,
        },
        **found,
        "cycle": cycle,
        "label_file": seg_path.name,
    }
    if loaded.num_classes > INFARCT:
        volumes["scar"] = scar_volumes(label_map, study.spacing, volumes["phases"]["ed"])
    gaps = study.geometry.get("slice_gaps_mm")
    volumes["quality"] = quality_report(
        label_map, study.spacing, volumes["phases"], volumes, entropy, gaps
    )
    alerts = [c["message"] for c in volumes["quality"]["checks"] if c["passed"] is False]
    write_overlay(
        study.image, label_map, study.spacing, volumes["phases"], out / "overlay.png", alerts
    )
    if label_map.shape[1] > 1:
        cycle_figure(volumes["per_frame_ml"], cycle, volumes["phases"], out / "curves.png")
    else:
        unavailable["curves.png"] = "one frame: no curve to plot"
    if study.geometry_note:  # the label map still gets the file's own header
        unavailable["orientation"] = (
            f"{study.geometry_note}: the image is segmented as stored, not turned to the "
            "canonical view the model was trained on; check the overlay"
        )
    volumes["unavailable"] = unavailable | missing
    write_dicom_outputs(study, label_map, volumes, out, loaded.num_classes, deidentify)  # SEG, SR
    _lap(clock, "write")
    volumes["seconds"] = {k: round(v, 3) for k, v in clock.items() if not k.startswith("_")}
    volumes["seconds"]["total"] = round(time.perf_counter() - clock["_start"], 3)
    write_volumes(volumes, out)
    return volumes


def study_folder_name(index: int, study_path: Path | str) -> str:
    """Output sub-folder of the index-th (1-based) of several studies: the position, plus the
    file's stem for a NIfTI (a DICOM folder's name is often a patient id: never reused)."""
    path = Path(study_path)
    stem = path.name.removesuffix(".gz").removesuffix(".nii") if path.is_file() else ""
    return f"{index:03d}_{stem}" if stem else f"{index:03d}_{DICOM_NAME}"


def _lap(clock: dict[str, float], name: str) -> None:
    """Seconds since the previous lap (or the start) under ``name``."""
    now = time.perf_counter()
    clock[name] = now - clock.get("_last", clock["_start"])
    clock["_last"] = now
