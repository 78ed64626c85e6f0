"""`cmrfm predict`: segment one study (a NIfTI file or a DICOM series folder) with a fine-tuned
model folder, and write the label map in the study's own grid, volumes, the volume curves over
the cycle (cmrfm.cycle), an overlay sheet and a curve plot (cmrfm.figures).

The model's preprocessing (config.json) is applied as in training: canonical orientation,
in-plane resampling, a centred crop and uint8 intensities. The prediction is then mapped back
step by step: un-cropped into the resampled grid, resampled to the native pixel grid (per-class
maps interpolated, then the most likely class: smoother than nearest neighbour), reoriented.
Nothing from a DICOM header that identifies a person reaches an output: the outputs are named
"study", and only geometry is read. The exceptions are a DICOM study's SEG and SR
(cmrfm.dicom_out), which belong to the patient and carry the source's references, unless
``deidentify``.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmrfm.cycle import (
    CURVE_FIELDS,
    FrameTimes,
    choose_frames,
    curve_rows,
    cycle_summary,
    dicom_frame_times,
    nifti_frame_times,
)
from cmrfm.quality import quality_report
from data_shards.preprocess import preprocess
from data_shards.record import INFARCT, LV, MVO, MYO, RV, Subject
from data_shards.volumes import volumes_ml
from finetune.metrics import clinical_indices, scar_extent

DICOM_NAME = "study"  # DICOM folder names are often patient ids: never reuse them
NIFTI_SUFFIXES = (".nii", ".nii.gz")
CSV_FIELDS = ("ventricle", "edv_ml", "esv_ml", "sv_ml", "ef_percent", "mass_g", "ed_frame", "es_frame")  # fmt: skip


@dataclass
class Study:
    """One study as read: image (S, T, H, W) float32, spacing (dz, dy, dx) mm, LPS geometry.

    ``affine`` (4, 4) is the RAS affine of the output NIfTI, whose array is (X, Y, Z[, T]) =
    (W, H, S[, T]); ``shape`` is that array's shape (the input file's own, for a NIfTI).
    """

    name: str
    kind: str  # "nifti" or "dicom"
    image: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    shape: tuple[int, ...]
    geometry: dict[str, Any] = field(default_factory=dict)  # direction, origin (LPS) if known
    header: Any = None  # the input's NIfTI header, copied into the output
    times: FrameTimes = field(default_factory=lambda: FrameTimes(None, "not given"))
    # DICOM: the frames read, [slice][frame] (file, header with identifiers): in memory only,
    # for the SEG and SR (cmrfm.dicom_out), which belong to the patient
    sources: Any = None
    geometry_note: str | None = None  # why the file's orientation is not used, if it is not


# --- reading -----------------------------------------------------------------------------------


def read_study(path: Path | str, affine_space: str | None = None) -> Study:
    """A NIfTI file (3D: one frame; 4D: a cine) or a folder holding one DICOM study (one
    series, or one series per slice or per phase, in sub-folders or not).

    Raises FileNotFoundError for a missing path or a folder without DICOM, SourceError
    (data_shards.sources) for an unreadable one, ValueError for several studies in one folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: study not found (give a .nii/.nii.gz file or a DICOM folder)"
        )
    if path.is_dir():
        return _read_dicom(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise FileNotFoundError(
            f"{path}: not a NIfTI file (.nii/.nii.gz); for DICOM give the folder of the series"
        )
    return _read_nifti(path, affine_space)


def _read_nifti(path: Path, affine_space: str | None) -> Study:
    import nibabel as nib

    from data_shards.sources.nifti import MNMS_GROUPING
    from data_shards.sources.nifti_io import read_nifti

    name = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".gz") else path.stem
    if affine_space is None:  # as the nifti source decides: M&Ms-2 files hold LPS affines
        affine_space = "lps" if re.fullmatch(MNMS_GROUPING, name, re.I) else "ras"
    volume = read_nifti(path, affine_space=affine_space)  # SourceError naming the file
    img = nib.load(path)
    step, unit = float(img.header["pixdim"][4]), img.header.get_xyzt_units()[1]
    return Study(
        name=name,
        kind="nifti",
        image=volume.data.astype(np.float32, copy=False),
        spacing=volume.spacing,
        affine=np.asarray(img.affine, dtype=np.float64),
        shape=tuple(int(n) for n in img.shape),
        geometry=volume.geometry_meta(),
        header=img.header,
        times=nifti_frame_times(step, unit, volume.data.shape[1]),
        geometry_note=volume.geometry_note,
    )


def _read_dicom(folder: Path) -> Study:
    from data_shards.sources import SourceError
    from data_shards.sources.dicom import find_studies, read_study_frames

    studies = find_studies(folder)  # FileNotFoundError when there is no DICOM at all
    # The salt only feeds the source's pseudonymous subject id, which predict never writes.
    try:  # sub-folders may be the series of one study (one per slice, say): read them as one
        # uneven gaps (a slice missing) are kept and flagged by the quality check, not refused
        subject, frames = read_study_frames(folder, salt="cmrfm-predict", even_gaps=False)
    except SourceError as err:
        if len(studies) == 1:
            raise
        raise ValueError(
            f"{folder}: its {len(studies)} sub-folders do not make one study ({err.reason}); "
            "give the folder of one study"
        ) from None
    s, t, h, w = subject.image.shape
    geometry = {
        k: subject.meta[k] for k in ("direction", "origin", "slice_gaps_mm") if k in subject.meta
    }
    return Study(
        name=DICOM_NAME,
        kind="dicom",
        image=subject.image,
        spacing=tuple(float(v) for v in subject.spacing),
        affine=lps_to_nifti_affine(geometry["direction"], geometry["origin"], subject.spacing),
        shape=(w, h, s, t) if t > 1 else (w, h, s),
        geometry=geometry,
        times=dicom_frame_times(subject.meta, t),
        sources=frames,
    )


def lps_to_nifti_affine(
    direction: Any, origin: Any, spacing: tuple[float, float, float]
) -> np.ndarray:
    """RAS affine (4, 4) of an (X=W, Y=H, Z=S) array from LPS direction rows [S, H, W], origin
    and spacing (dz, dy, dx); an unknown dz (one slice) counts as 1 mm."""
    d = np.asarray(direction, dtype=np.float64)
    dz, dy, dx = (float(v) for v in spacing)
    dz = dz if math.isfinite(dz) and dz > 0 else 1.0
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = d[2] * dx, d[1] * dy, d[0] * dz
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    affine[:2] *= -1.0  # LPS -> RAS: x and y change sign (the last row stays 0 0 0 1)
    affine[3] = (0.0, 0.0, 0.0, 1.0)
    return affine


# --- preprocessing and its inverse -------------------------------------------------------------


def prepare(study: Study, config: Any) -> Subject:
    """The study on the model's grid (uint8 (S, T, size, size)); meta records how to undo it."""
    subject = Subject(study.name, study.image, None, study.spacing, dict(study.geometry))
    return preprocess(subject, config)


def restore_labels(pred: np.ndarray, meta: dict, num_classes: int) -> np.ndarray:
    """Labels (S, T, size, size) on the model's grid -> (S, T, H, W) on the study's own grid.

    Undoes, in reverse order, what data_shards.preprocess did: the crop window, the in-plane
    resampling (per-class maps resampled, then argmax) and the reorientation (flips, transpose).
    """
    s, t, h0, w0 = meta["original_shape"]
    orientation = meta.get("orientation")
    plan = orientation if isinstance(orientation, dict) else {"transposed": False, "flipped": []}
    oriented_hw = (w0, h0) if plan["transposed"] else (h0, w0)
    crop = meta["crop"]
    window = pred.reshape(s * t, *pred.shape[2:])
    start, resampled = tuple(crop["box"][:2]), tuple(crop["resampled_shape"])
    labels = _unresample(window, start, resampled, oriented_hw, num_classes)
    labels = labels.reshape(s, t, *oriented_hw)
    axes = {"S": 0, "H": 2, "W": 3}
    for name in plan["flipped"]:  # flips were made after the transpose: undo them first
        labels = np.flip(labels, axes[name])
    if plan["transposed"]:
        labels = labels.swapaxes(2, 3)
    return np.ascontiguousarray(labels)


def _unresample(
    window: np.ndarray,
    start: tuple[int, int],
    resampled_hw: tuple[int, int],
    native_hw: tuple[int, int],
    num_classes: int,
    chunk: int = 64,
) -> np.ndarray:
    """(N, size, size) labels of the crop window at ``start`` of the resampled grid -> (N, h, w)
    native labels: every class's indicator map sampled bilinearly at the native pixel centres
    (MONAI's and torch's convention: native pixel i sits at (i + 0.5) * h' / h - 0.5), then the
    most likely class. Only native pixels near the window are computed; the rest is background.
    """
    n, size, _ = window.shape
    out = np.zeros((n, *native_hw), dtype=np.uint8)
    spans, coords = [], []
    for a0, rn, hn in zip(start, resampled_hw, native_hw, strict=True):
        # In pixels of the window padded by one background pixel; clamped like interpolation.
        u = np.clip((np.arange(hn) + 0.5) * rn / hn - 0.5, 0, rn - 1) - (a0 - 1)
        inside = np.nonzero((u >= 0) & (u <= size + 1))[0]  # u rises with i: one run
        if not inside.size:
            return out
        spans.append(slice(int(inside[0]), int(inside[-1]) + 1))
        coords.append(torch.from_numpy((2 * u[inside] + 1) / (size + 2) - 1).float())
    gy, gx = torch.meshgrid(coords[0], coords[1], indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]  # (1, h, w, 2): x then y, as grid_sample wants
    padded = np.zeros((n, size + 2, size + 2), dtype=np.int64)
    padded[:, 1:-1, 1:-1] = window
    k = max(num_classes, int(window.max()) + 1)
    for i in range(0, n, chunk):
        x = torch.from_numpy(padded[i : i + chunk])
        onehot = torch.nn.functional.one_hot(x, k).permute(0, 3, 1, 2).float()  # (n, K, .., ..)
        maps = torch.nn.functional.grid_sample(
            onehot, grid.expand(len(x), -1, -1, -1), mode="bilinear", align_corners=False
        )
        out[i : i + chunk, spans[0], spans[1]] = _argmax_classes(maps).numpy()
    return out


def _argmax_classes(maps: torch.Tensor) -> torch.Tensor:
    """argmax over dim 1 of (N, K, H, W), class by class: torch's strided argmax is ~10x slower."""
    best, index = maps[:, 0].clone(), torch.zeros(maps[:, 0].shape, dtype=torch.uint8)
    for c in range(1, maps.shape[1]):
        better = maps[:, c] > best  # ties keep the lower class, as argmax does
        best = torch.where(better, maps[:, c], best)
        index[better] = c
    return index


# --- volumes -----------------------------------------------------------------------------------


def ventricular_volumes(
    labels: np.ndarray,
    spacing: tuple[float, float, float],
    ed: int | None = None,
    es: int | None = None,
) -> dict[str, Any]:
    """LV/RV EDV, ESV, SV (ml), EF (%) and LV mass (g) from labels (S, T, H, W), the volume
    curves (ml per frame) and the reason for each index that is None (``unavailable``).

    ED and ES default to the frames of largest and smallest LV cavity volume
    (`cmrfm.cycle.choose_frames`); with one frame both are that frame, and SV and EF are
    undefined (None).
    """
    t = labels.shape[1]
    lv, rv = volumes_ml(labels, spacing, LV), volumes_ml(labels, spacing, RV)
    myo = volumes_ml(labels, spacing, MYO)
    chosen = choose_frames(lv, ed, es)  # ValueError for a frame outside the study
    if ed is not None or es is not None:
        rule = "given"
    elif t == 1:
        rule = "one frame: volumes of that frame; SV and EF need a cine"
    else:
        rule = "ED: largest LV cavity volume, ES: smallest"
    found = clinical_indices(labels, spacing, chosen["ed"], chosen["es"], rv=True)
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
        "frames": {**chosen, "n_frames": t, "rule": rule},
        "lv": {**indices("lv"), "mass_g": found["lv_mass"]},
        "rv": indices("rv"),
        "per_frame_ml": {"lv": lv.tolist(), "myo": myo.tolist(), "rv": rv.tolist()},
        "unavailable": unavailable,
    }


def scar_volumes(labels: np.ndarray, spacing: tuple[float, float, float], frame: int) -> dict:
    """LGE scar at one frame of labels (S, T, H, W): infarct (MVO included) and MVO in ml and as
    % of the LV myocardium (`finetune.metrics.scar_extent`)."""
    infarct, mvo = (float(volumes_ml(labels, spacing, c)[frame]) for c in (INFARCT, MVO))
    extent = {k: _finite(v) for k, v in scar_extent(labels, frame).items()}
    return {"frame": frame, "infarct_ml": infarct + mvo, "mvo_ml": mvo, **extent}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# --- writing -----------------------------------------------------------------------------------


def write_labels(study: Study, labels: np.ndarray, out: Path) -> Path:
    """``<name>_seg.nii.gz``: labels (S, T, H, W) in the input's array shape and geometry.

    A NIfTI input's header is copied as it is: pixdim, units, qform and sform with their codes.
    Passing no affine keeps nibabel from rewriting them; an affine would set pixdim from its
    column norms, and ACDC's release (unscaled affine, voxel size only in pixdim) would come
    out 1 x 1 x 1 mm. A DICOM study gets the affine of its geometry, scaled by the spacing.
    """
    import nibabel as nib

    data = labels.transpose(3, 2, 0, 1).reshape(study.shape)  # (W, H, S, T) = (X, Y, Z, T)
    if study.header is not None:
        header = study.header.copy()
        header.set_data_dtype(np.uint8)
        kind = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = kind(data, None, header=header)
        image.header.set_slope_inter(1.0, 0.0)
    else:
        image = nib.Nifti1Image(data, study.affine)
        image.header.set_xyzt_units("mm", "msec")
        if study.times.ms is not None and len(study.times.ms) > 1:  # else pixdim[4] 1 "ms"
            image.header["pixdim"][4] = float(np.median(np.diff(study.times.ms)))
        image.set_qform(study.affine, code=1)
        image.set_sform(study.affine, code=1)
    path = out / f"{study.name}_seg.nii.gz"
    nib.save(image, path)
    return path


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
    frames = volumes["frames"]
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        for ventricle in ("lv", "rv"):
            row = {k: volumes[ventricle].get(k) for k in CSV_FIELDS[1:6]}
            writer.writerow(
                {"ventricle": ventricle, **row, "ed_frame": frames["ed"], "es_frame": frames["es"]}
            )
    with curves_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(curve_rows(volumes["per_frame_ml"], volumes["cycle"], frames))
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
    preprocess: Any  # data_shards.preprocess.PreprocessConfig
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
        from finetune.package import preprocess_config, read_package_config

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
        pre = preprocess_config(config["preprocess"], str(Path(model_dir) / "config.json"))
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
    pred, entropy = predict_study(  # (S, T, H, W) labels, (S, T) uncertainty
        network, prepared.image, loaded.frames, batch=batch, entropy=True
    )
    _lap(clock, "model")
    labels = restore_labels(pred, prepared.meta, loaded.num_classes)
    _lap(clock, "restore")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seg_path = write_labels(study, labels, out)
    found = ventricular_volumes(labels, study.spacing, ed, es)
    unavailable = found.pop("unavailable")
    cycle, missing = cycle_summary(found["per_frame_ml"]["lv"], study.times, found["frames"])
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
        volumes["scar"] = scar_volumes(labels, study.spacing, volumes["frames"]["ed"])
    gaps = study.geometry.get("slice_gaps_mm")
    volumes["quality"] = quality_report(
        labels, study.spacing, volumes["frames"], volumes, entropy, gaps
    )
    alerts = [c["message"] for c in volumes["quality"]["checks"] if c["passed"] is False]
    write_overlay(
        study.image, labels, study.spacing, volumes["frames"], out / "overlay.png", alerts
    )
    if labels.shape[1] > 1:
        cycle_figure(volumes["per_frame_ml"], cycle, volumes["frames"], out / "curves.png")
    else:
        unavailable["curves.png"] = "one frame: no curve to plot"
    if study.geometry_note:  # the label map still gets the file's own header
        unavailable["orientation"] = (
            f"{study.geometry_note}: the image is segmented as stored, not turned to the "
            "canonical view the model was trained on; check the overlay"
        )
    volumes["unavailable"] = unavailable | missing
    write_dicom_outputs(study, labels, volumes, out, loaded.num_classes, deidentify)  # SEG, SR
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
