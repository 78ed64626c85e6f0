"""A hub folder's files, read and checked before any weight is loaded: config.json (format,
version, embedding rows, the fields loading needs), model.safetensors whole and with the sha256
config.json records, and the architecture config.json states against the one the tensors have."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from cmrfm_io.files import read_json, sha256_file
from foundation.architecture import ARCH_ARGS, BackboneWeights, check_agree, inferred_architecture
from foundation.names import CONFIG_NAME, FORMAT, FORMAT_VERSION, SHA256_KEY, WEIGHTS_NAME
from foundation.vit import AXES, MODALITIES


def read_config(folder: Path) -> dict[str, Any]:
    """A hub folder's config.json, checked for the fields loading needs."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = read_json(path)  # ValueError naming the file when it is not JSON
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: missing; a cmrfm hub folder holds {CONFIG_NAME} (the architecture and the "
            f"sha256 of {WEIGHTS_NAME}) next to its weights: export or download the whole folder"
        ) from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: format {config.get('format')!r} is not {FORMAT!r}")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {config['format_version']} is newer than this cmrfm reads "
            f"({FORMAT_VERSION}); upgrade cmrfm"
        )
    for key, ours in (("modalities", MODALITIES), ("axes", AXES)):
        theirs = tuple(config.get(key, ()))
        if theirs != ours[: len(theirs)]:  # rows are only ever appended
            raise ValueError(
                f"{path}: embedding rows {key}={list(theirs)} differ from this cmrfm's {list(ours)}"
            )
    if not isinstance(config.get("model_args"), dict) or "preprocess" not in config:
        raise ValueError(f"{path}: needs 'model_args' and 'preprocess'")
    return config


def check_safetensors(path: Path) -> None:
    """Raise naming path when it is not a whole safetensors file: too short for the 8-byte
    header length, an unreadable header, or fewer bytes than the header describes (a cut-short
    copy or download, which safetensors itself reports only as a deserialising error)."""
    size = path.stat().st_size
    again = "copy, download or export it again"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(
                f"{path}: truncated: {size} bytes, not even a safetensors header; {again}"
            )
        n = struct.unpack("<Q", head)[0]
        if 8 + n > size:
            raise ValueError(
                f"{path}: truncated: {size} bytes, but its header alone says {8 + n}; {again}"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a safetensors file (unreadable header: {err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise ValueError(
            f"{path}: truncated: {size} bytes of the {expected} its header describes; {again}"
        )


def verify_sha256(path: Path, expected: str | None, recorded_in: Path) -> None:
    """Compare path's sha256 with the one recorded_in records; None (a folder from before the
    hash was recorded) only warns, so old folders keep loading."""
    if expected is None:
        warnings.warn(
            f"{recorded_in}: records no {SHA256_KEY} (written before cmrfm recorded it), so "
            f"{path} loads unverified; save or export the folder again to record it",
            stacklevel=3,
        )
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(
            f"{path}: sha256 mismatch: {recorded_in} records {expected}, the file has {actual}; "
            "it was changed or damaged after it was saved: download or export it again"
        )


def read_hub_weights(folder: Path) -> BackboneWeights:
    """A hub folder's weights, after checking that config.json is there and valid, that
    model.safetensors is whole and has the recorded sha256, and that the architecture config.json
    records is the one the tensors have."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() and not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{folder}: a folder, but no {WEIGHTS_NAME} or {CONFIG_NAME} in it; pass a hub folder "
            "(`cmrfm export` writes one) or a Lightning .ckpt file"
        )
    config = read_config(folder)
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; a cmrfm hub folder holds its weights as safetensors (nothing else "
            "is loaded): export or download the whole folder"
        )
    check_safetensors(path)
    verify_sha256(path, config.get(SHA256_KEY), folder / CONFIG_NAME)
    try:
        state = load_file(path)  # tensors only, nothing unpickled
    except Exception as err:  # a damaged file whose size still adds up
        raise ValueError(f"{path}: cannot read as safetensors ({err})") from err
    args = config["model_args"]
    recorded = {k: args[k] for k in ARCH_ARGS if k in args}
    check_agree(
        inferred_architecture(state), recorded, path, "holds weights with",
        f"but {CONFIG_NAME} says", f": {CONFIG_NAME} does not describe these weights",
    )  # fmt: skip
    return BackboneWeights(path, state, "", recorded, config.get("architecture"), config)
