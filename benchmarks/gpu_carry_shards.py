"""Pack the pretraining shards into one xz tar that fits a GPU call's 64 MiB working tree.

The GPU host sees only the repository (runs/ is not carried), so benchmarks/gpu_pretrain_sweep.sh
reads `.gpu_data/shards.tar.xz` (ignored) and unpacks it to runs/real. To fit, the ACDC cine
keeps every ``--cine-stride``-th frame (the pretext draws single frames; neighbours are near
copies); the other sets travel as they are. Manifests follow (sample shapes, shard sha256/bytes).

    python benchmarks/gpu_carry_shards.py [--root runs/real] [--out .gpu_data/shards.tar.xz]
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from cmrfm_io.files import sha256_file

SETS = ("acdc", "acdc_cine", "sunnybrook", "mnms2")


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def thin_frames(folder: Path, out: Path, stride: int) -> None:
    """A copy of a shard folder whose images keep every stride-th frame: (S, T, H, W) ->
    (S, ceil(T / stride), H, W); meta and manifest shapes follow."""
    out.mkdir(parents=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    shapes = {}
    for shard in manifest["shards"]:
        with (
            tarfile.open(folder / shard["name"]) as src,
            tarfile.open(out / shard["name"], "w") as dst,
        ):
            for member in src.getmembers():
                data = src.extractfile(member).read()
                key, _, kind = member.name.partition(".")
                if kind == "image.npy":
                    image = np.load(io.BytesIO(data))[:, ::stride]
                    shapes[key] = list(image.shape)
                    buffer = io.BytesIO()
                    np.save(buffer, np.ascontiguousarray(image))
                    data = buffer.getvalue()
                elif kind == "label.npy":
                    raise ValueError(
                        f"{folder / shard['name']}: {member.name}: labelled frames "
                        "would lose their ED/ES indices; thin only unlabelled cine"
                    )
                elif kind == "meta.json":
                    meta = json.loads(data)
                    meta["n_frames"] = -(-meta["n_frames"] // stride)
                    meta["shape"][1] = meta["n_frames"]
                    meta["thinned"] = f"every {stride}th frame, for a GPU call's size limit"
                    data = json.dumps(meta).encode()
                _member(dst, member.name, data)
        shard["sha256"], shard["bytes"] = (
            sha256_file(out / shard["name"]),
            (out / shard["name"]).stat().st_size,
        )
    for sample in manifest["samples"]:
        sample["shape"] = shapes.get(sample["key"], sample["shape"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/real"))
    parser.add_argument("--out", type=Path, default=Path(".gpu_data/shards.tar.xz"))
    parser.add_argument("--cine-stride", type=int, default=2)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        thin_frames(args.root / "acdc_cine", Path(tmp) / "acdc_cine", args.cine_stride)
        with tarfile.open(args.out, "w:xz", preset=6) as tar:
            for name in SETS:
                source = Path(tmp) / name if name == "acdc_cine" else args.root / name
                tar.add(source, arcname=name)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
