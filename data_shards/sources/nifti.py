"""Folders of 3D or 4D NIfTI images with optional ``<stem>_gt`` label files (M&Ms-2 and alike).

Layout: NIfTI files directly in ``root``, or in one folder per patient (``root/001/...``), or
both. ``x.nii.gz`` is labelled by ``x_gt.nii.gz`` beside it (same shape and voxel size). A 3D
file (X, Y, Z) is one frame (T = 1); a 4D file (X, Y, Z, T) a cine.

Grouping (``group_by``, by default the M&Ms convention ``<id>_<view>_<ED|ES|CINE>``): files of
one patient and view become one subject. ED and ES frames stack into a cine of T = 2 (ed 0,
es 1) like ACDC's; when the view also has a CINE file holding those very frames (M&Ms-2's
long axis: ED and ES are frames of ``001_LA_CINE``), the subject is the whole cine labelled at
those frames, otherwise the cine is a separate unlabelled subject ``<id>-<view>-cine``.
Files that do not match are one subject each.

Subject ids are ``<prefix>-<id>-<view>`` (``mnms2-001-sa``) or ``<prefix>-<stem>``, with the
patient folder's name in front when the name lacks it; ``split_group`` is ``<prefix>-<patient>``
(the patient folder, else the group id, else the stem), so every view of a patient lands in one
split. NIfTI headers carry no patient identifiers we read; file paths never reach meta.

Modality is "cine" unless ``modality="lge"`` says otherwise: nothing in a NIfTI tells a
one-frame cine from an LGE volume, and most 3D cardiac NIfTIs are cine ED/ES frames.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm_io.modalities import MODALITIES
from data_shards.record import BACKGROUND, IGNORE, INFARCT, LABEL_NAMES, LV, MVO, MYO, RV, Subject
from data_shards.sources.nifti_io import TO_LPS, NiftiVolume, frames_equal, read_nifti
from data_shards.sources.registry import SourceError, named_regex, register_source

# Source label -> ours, by dataset. "cmrfm" (the default) means already in our convention.
LABEL_PRESETS: dict[str, dict[int, int]] = {
    "cmrfm": {value: value for value in LABEL_NAMES},
    "mnms2": {0: BACKGROUND, 1: LV, 2: MYO, 3: RV},
    "acdc": {0: BACKGROUND, 1: RV, 2: MYO, 3: LV},
    "emidec": {0: BACKGROUND, 1: LV, 2: MYO, 3: INFARCT, 4: MVO},
}
# M&Ms(-2): 001_SA_ED, 001_LA_CINE. Matched case-insensitively against the whole stem.
MNMS_GROUPING = r"(?P<id>.+?)_(?P<view>[A-Za-z0-9]+)_(?P<phase>ED|ES|CINE)"


@dataclass
class _Plan:
    """One subject to read: image files by phase ("" for an ungrouped file), label files beside."""

    subject: str
    dataset: str
    split_group: str
    view: str | None
    affine_space: str = "ras"  # how to read this plan's affines when the caller did not say
    files: dict[str, Path] = field(default_factory=dict)
    label_files: dict[str, Path] = field(default_factory=dict)
    error: SourceError | None = None


@dataclass(frozen=True)
class _Options:
    mapping: dict[int, int]  # source label -> ours
    modality: str | None
    affine_space: str | None


@register_source("nifti")
def nifti(
    root: Path | str | None,
    label_suffix: str = "_gt",
    label_map: dict[int, int] | str | None = None,
    modality: str | None = None,
    pattern: str = "*.nii*",
    group_by: str | None = MNMS_GROUPING,
    prefix: str | None = None,
    limit: int | None = None,
    affine_space: str | None = None,
) -> Iterator[Subject | SourceError]:
    """Yield one Subject per image file or file group under ``root``, sorted by subject id.

    Args:
        root: folder of NIfTI files, or of one folder of them per patient.
        label_suffix: a label file is ``<image stem><label_suffix>.nii[.gz]``.
        label_map: source label -> ours, a dict (JSON string keys are fine) or a preset name
            (``LABEL_PRESETS``: "mnms2", "acdc", "emidec", "cmrfm"); None = already ours. 0 maps
            to background unless given. A label value outside it is a SourceError.
        modality: "lge" for LGE volumes (then every subject must be one frame); None or "cine"
            gives cine, whatever T: a 3D file is a one-frame cine (a frame or a slice stack).
        pattern: glob for image and label file names; only .nii and .nii.gz files are read.
        group_by: regex fully matching a stem (case-insensitive) with named groups ``id``,
            ``phase`` (ED, ES or CINE) and optionally ``view``; None reads every file alone.
        prefix: subject id prefix; default the name of ``root`` (e.g. "mnms2").
        limit: stop after this many subjects.
        affine_space: "ras", the NIfTI standard; "lps" where a release wrote DICOM's patient
            coordinates into the affine unconverted. M&Ms-2 did: read as RAS, its RV lies left
            and posterior of the LV and its short-axis slices run away from the apex. None (the
            default): "lps" for files named by the built-in M&Ms-2 convention, else "ras".
            Recorded in meta ``affine_space`` beside ``direction``.

    Yields:
        Subject: image float32 (S, T, H, W); label uint8 (S, T, H, W) in our convention with
        IGNORE on frames without ground truth (a 4D label's all-background frames count as
        unlabelled), or None; spacing (dz, dy, dx) mm; meta source "nifti", dataset, modality,
        view (grouped files), ed/es (0-based where known; else ed 0), n_frames, frames_source
        ("4d", "ed_es" or "3d"), split_group, direction/origin/affine_space where the affine
        is trusted, frames_note where a cine did not hold the ED/ES frames. A bad file or
        group gives a SourceError naming the file.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no matching NIfTI file.
        ValueError: an option is invalid (unknown preset, bad regex, unknown modality).
    """
    if root is None:
        raise ValueError("nifti needs root: the folder that holds the NIfTI files")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: NIfTI root folder not found")
    if not label_suffix:
        raise ValueError("label_suffix must not be empty: it tells label files from images")
    if modality not in (None, *MODALITIES):
        raise ValueError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
    if affine_space is not None and affine_space not in TO_LPS:
        raise ValueError(f"affine_space must be one of {list(TO_LPS)}, got {affine_space!r}")
    mapping = resolve_label_map(label_map)
    grouping = _compile_grouping(group_by)
    mnms = group_by == MNMS_GROUPING
    files = _nifti_files(root, pattern)
    if not files:
        raise FileNotFoundError(
            f"{root}: no NIfTI files (.nii/.nii.gz matching {pattern!r}) in it or its subfolders"
        )
    plans = _plan_subjects(root, files, label_suffix, grouping, prefix or root.name, mnms)
    if limit is not None:
        plans = plans[: max(0, limit)]
    return _read_plans(plans, _Options(mapping, modality, affine_space))


def resolve_label_map(label_map: dict | str | None) -> dict[int, int]:
    """The {source value: our value} dict for a preset name, a dict or None (ours already)."""
    if label_map is None:
        label_map = "cmrfm"
    if isinstance(label_map, str):
        if label_map.lower() not in LABEL_PRESETS:
            raise ValueError(
                f"unknown label_map preset {label_map!r}; presets: {', '.join(LABEL_PRESETS)}"
            )
        return dict(LABEL_PRESETS[label_map.lower()])
    try:
        mapping = {int(k): int(v) for k, v in dict(label_map).items()}
    except (TypeError, ValueError):
        raise ValueError(f"label_map must map integer labels to ours, got {label_map!r}") from None
    bad = sorted(v for v in mapping.values() if v not in LABEL_NAMES and v != IGNORE)
    if bad:
        raise ValueError(
            f"label_map targets {bad} are not our labels {dict(LABEL_NAMES)} or IGNORE {IGNORE}"
        )
    mapping.setdefault(0, BACKGROUND)
    return mapping


def map_labels(label: np.ndarray, mapping: dict[int, int], path: Path) -> np.ndarray:
    """Source label values (any numeric dtype) -> ours as uint8; SourceError on unknown values."""
    values, inverse = np.unique(label, return_inverse=True)
    bad = [v.item() for v in values if v != np.round(v) or int(v) not in mapping]
    if bad:
        raise SourceError(
            path,
            f"label values {bad[:10]} not in label_map {sorted(mapping)}; pass the dataset's "
            f"label_map (presets: {', '.join(LABEL_PRESETS)})",
        )
    ours = np.array([mapping[int(v)] for v in values], dtype=np.uint8)
    return ours[inverse].reshape(label.shape)


def _compile_grouping(group_by: str | None) -> re.Pattern | None:
    return None if group_by is None else named_regex(group_by, "group_by", {"id", "phase"}, re.I)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]


def _nifti_files(root: Path, pattern: str) -> list[Path]:
    """.nii/.nii.gz files matching ``pattern`` in ``root`` and its direct subfolders."""
    candidates = [*root.glob(pattern), *root.glob(f"[!.]*/{pattern}")]
    return sorted(
        p
        for p in candidates
        if p.is_file() and not p.name.startswith(".") and p.name.endswith((".nii", ".nii.gz"))
    )


def _plan_subjects(
    root: Path,
    files: list[Path],
    suffix: str,
    grouping: re.Pattern | None,
    prefix: str,
    mnms: bool = False,
) -> list[_Plan]:
    """Group image files into subjects, attach label files; orphans become error plans."""
    stems = {(p.parent, _stem(p)): p for p in files}
    plans: dict[str, _Plan] = {}
    for (folder, stem), path in stems.items():
        if stem.endswith(suffix) and (folder, stem[: -len(suffix)]) in stems:
            continue  # a label, attached to its image below
        if stem.endswith(suffix):
            orphan = SourceError(path, f"label file without image {stem[: -len(suffix)]}.nii.gz")
            plans[f"{prefix}-{stem}"] = _Plan(f"{prefix}-{stem}", prefix, "", None, error=orphan)
            continue
        match = grouping.fullmatch(stem) if grouping else None
        patient, view, phase, name = stem, None, "", stem
        if match:
            patient, view, phase = match["id"], match.groupdict().get("view"), match["phase"]
            phase, name = phase.upper(), f"{patient}-{view.lower()}" if view else patient
        if folder != root:  # one folder per patient: the folder is the patient
            patient = folder.name
            if not name.startswith(folder.name):
                name = f"{folder.name}-{name}"
        subject = f"{prefix}-{name}"
        space = "lps" if mnms and match else "ras"  # see the affine_space argument
        plan = plans.setdefault(subject, _Plan(subject, prefix, f"{prefix}-{patient}", view, space))
        if phase in plan.files:
            other = plan.files[phase].name
            plan.error = SourceError(path, f"same subject and phase as {other}; remove one")
        plan.files[phase] = path
        label = stems.get((folder, stem + suffix))
        if label is not None:
            plan.label_files[phase] = label
    return [plans[key] for key in sorted(plans)]


def _read_plans(plans: list[_Plan], options: _Options) -> Iterator[Subject | SourceError]:
    for plan in plans:
        if plan.error is not None:
            yield plan.error
            continue
        plan_options = replace(options, affine_space=options.affine_space or plan.affine_space)
        try:
            subjects = _read_plan(plan, plan_options)
            for subject in subjects:
                _set_modality(subject, options.modality, plan)
        except SourceError as err:
            yield err
            continue
        yield from subjects


def _set_modality(subject: Subject, modality: str | None, plan: _Plan) -> None:
    if modality == "lge" and subject.image.shape[1] != 1:
        path = next(iter(plan.files.values()))
        raise SourceError(
            path,
            f"modality 'lge' but {subject.image.shape[1]} frames: LGE has one frame per slice; "
            "leave modality unset for cine",
        )
    subject.meta["modality"] = modality or "cine"


def _read_plan(plan: _Plan, options: _Options) -> list[Subject]:
    """The subject(s) of one plan: usually one; two where a cine does not hold ED/ES."""
    if "" in plan.files:
        volume, label = _read_pair(plan.files[""], plan.label_files.get(""), options)
        t = volume.data.shape[1]
        meta = {"ed": 0, **_ed_es_from_labels(label), "frames_source": "4d" if t > 1 else "3d"}
        return [_subject(plan.subject, plan, volume, label, meta)]
    phase_volumes = {
        phase: _read_frame(plan.files[phase], plan.label_files.get(phase), options)
        for phase in ("ED", "ES")
        if phase in plan.files
    }
    _check_phases_agree(phase_volumes)
    if "CINE" not in plan.files:
        return [_stacked_subject(plan, phase_volumes)]
    cine, cine_label = _read_pair(plan.files["CINE"], plan.label_files.get("CINE"), options)
    if not phase_volumes:
        meta = {"ed": 0, **_ed_es_from_labels(cine_label), "frames_source": "4d"}
        return [_subject(plan.subject, plan, cine, cine_label, meta)]
    found, note = _locate_phases(cine, phase_volumes)
    if found is None:
        stacked = _stacked_subject(plan, phase_volumes)
        stacked.meta["frames_note"] = note
        meta = {"ed": 0, **_ed_es_from_labels(cine_label), "frames_source": "4d"}
        alone = _subject(f"{plan.subject}-cine", plan, cine, cine_label, meta)
        alone.meta["frames_note"] = note
        return [stacked, alone]
    label = None
    if cine_label is not None or any(lab is not None for _, lab in phase_volumes.values()):
        label = cine_label if cine_label is not None else _unlabelled(cine.data.shape)
        for phase, (_, lab) in phase_volumes.items():
            if lab is not None:
                label[:, found[phase]] = lab[:, 0]
    meta = {"ed": 0, **{phase.lower(): t for phase, t in found.items()}, "frames_source": "4d"}
    return [_subject(plan.subject, plan, cine, label, meta)]


def _read_pair(
    path: Path, label_path: Path | None, options: _Options
) -> tuple[NiftiVolume, np.ndarray | None]:
    """Image (S, T, H, W) and its label in our convention (IGNORE on a 4D label's empty frames)."""
    volume = read_nifti(path, affine_space=options.affine_space)
    if label_path is None:
        return volume, None
    gt = read_nifti(label_path, affine_space=options.affine_space)
    if gt.data.shape != volume.data.shape:
        raise SourceError(
            label_path, f"label shape {gt.data.shape} != image shape {volume.data.shape} (S,T,H,W)"
        )
    if not np.allclose(gt.spacing, volume.spacing, rtol=1e-3):
        raise SourceError(
            label_path, f"label voxel size {gt.spacing} != image voxel size {volume.spacing} mm"
        )
    label = map_labels(gt.data, options.mapping, label_path)
    if label.shape[1] > 1:
        # 4D ground truth is drawn on a few frames and left empty elsewhere (M&Ms-1 style).
        empty = ~label.any(axis=(0, 2, 3))  # (T,)
        label[:, empty] = IGNORE
        if empty.all():
            return volume, None
    return volume, label


def _read_frame(
    path: Path, label_path: Path | None, options: _Options
) -> tuple[NiftiVolume, np.ndarray | None]:
    volume, label = _read_pair(path, label_path, options)
    if volume.data.shape[1] != 1:
        raise SourceError(
            path, f"an ED/ES file must be one 3D frame, got {volume.data.shape[1]} frames"
        )
    return volume, label


def _check_phases_agree(phase_volumes: dict[str, tuple[NiftiVolume, Any]]) -> None:
    if len(phase_volumes) < 2:
        return
    (ed, _), (es, _) = phase_volumes["ED"], phase_volumes["ES"]
    if ed.data.shape != es.data.shape:
        raise SourceError(es.path, f"ES shape {es.data.shape} != ED shape {ed.data.shape}")
    if not np.allclose(ed.spacing, es.spacing, rtol=1e-3):
        raise SourceError(es.path, f"ES voxel size {es.spacing} != ED voxel size {ed.spacing} mm")


def _locate_phases(
    cine: NiftiVolume, phase_volumes: dict[str, tuple[NiftiVolume, Any]]
) -> tuple[dict[str, int] | None, str | None]:
    """The cine frame index holding each ED/ES frame, or None and why not."""
    found = {}
    for phase, (volume, _) in phase_volumes.items():
        if not np.allclose(cine.spacing, volume.spacing, rtol=1e-3):
            return None, f"cine voxel size {cine.spacing} != {phase} voxel size {volume.spacing}"
        hits = [
            t for t in range(cine.data.shape[1]) if frames_equal(cine.data[:, t], volume.data[:, 0])
        ]
        if not hits:
            return None, f"the cine holds no frame equal to the {phase} file"
        found[phase] = hits[0]
    return found, None


def _stacked_subject(plan: _Plan, phase_volumes: dict[str, tuple[NiftiVolume, Any]]) -> Subject:
    """ED and ES files (whichever exist) as one (S, T <= 2, H, W) cine in the order ED, ES."""
    phases = list(phase_volumes)
    first = phase_volumes[phases[0]][0]
    image = np.concatenate([phase_volumes[p][0].data for p in phases], axis=1)
    label = None
    if any(lab is not None for _, lab in phase_volumes.values()):
        label = _unlabelled(image.shape)
        for t, phase in enumerate(phases):
            if phase_volumes[phase][1] is not None:
                label[:, t] = phase_volumes[phase][1][:, 0]
    meta = {phase.lower(): t for t, phase in enumerate(phases)}
    meta["frames_source"] = "ed_es"
    volume = replace(first, data=image)
    return _subject(plan.subject, plan, volume, label, meta)


def _subject(
    subject_id: str,
    plan: _Plan,
    volume: NiftiVolume,
    label: np.ndarray | None,
    meta: dict[str, Any],
) -> Subject:
    info = {
        "source": "nifti",
        "dataset": plan.dataset,
        **({"view": plan.view.upper()} if plan.view else {}),
        **meta,
        "n_frames": int(volume.data.shape[1]),
        "split_group": plan.split_group,
        **volume.geometry_meta(),
    }
    if "direction" in info:
        info["affine_space"] = volume.affine_space
    image = volume.data.astype(np.float32, copy=False)
    return Subject(subject_id, image, label, volume.spacing, info)


def _ed_es_from_labels(label: np.ndarray | None) -> dict[str, int]:
    """ED/ES of a cine labelled at exactly two frames: ED has the larger LV cavity."""
    if label is None or label.shape[1] < 2:
        return {}
    labelled = [t for t in range(label.shape[1]) if (label[:, t] != IGNORE).any()]
    if len(labelled) != 2:
        return {}
    lv = [int((label[:, t] == LV).sum()) for t in labelled]
    if lv[0] == lv[1]:
        return {}
    ed, es = labelled if lv[0] > lv[1] else labelled[::-1]
    return {"ed": ed, "es": es}


def _unlabelled(shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, IGNORE, dtype=np.uint8)
