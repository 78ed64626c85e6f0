"""The public datasets a model may have seen: how to recognise them in a shard manifest, their
terms and citations, and the licence (front matter, LICENSE.md) their weights inherit."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYNTHETIC = "phantom"  # the project's own synthetic source: no third-party terms
LICENCE_NAME = "LICENSE.md"


@dataclass(frozen=True)
class Dataset:
    """A public dataset a model may have seen: how to recognise it, its terms, its citation."""

    name: str
    aliases: tuple[str, ...]  # lower-case fragments of a manifest's root, source or sample keys
    citation: str
    terms: str = "non-commercial research use only; the dataset's own terms of use apply"


# Citations as /work/shared/data/README.md asks for them; every one is non-commercial research.
DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "ACDC",
            ("acdc",),
            "O. Bernard et al., IEEE TMI 37(11):2514-2525, 2018, doi:10.1109/TMI.2018.2837502.",
        ),
        Dataset(
            "Sunnybrook",
            ("sunnybrook",),
            'P. Radau et al., "Evaluation Framework for Algorithms Segmenting Short Axis Cardiac '
            'MRI", The MIDAS Journal, 2009.',
        ),
        Dataset(
            "M&Ms-2",
            ("mnms2", "mnms-2", "m&ms-2", "mnm2"),
            "The Multi-Disease, Multi-View and Multi-Centre Right Ventricular Segmentation in "
            "Cardiac MRI challenge (STACOM 2021); C. Martin-Isla et al., IEEE JBHI, 2023.",
        ),
        Dataset(
            "EMIDEC",
            ("emidec",),
            'A. Lalande et al., "Emidec: a database usable for the automatic evaluation of '
            'myocardial infarction from delayed-enhancement cardiac MRI", Data 5(4):89, 2020.',
        ),
        Dataset(
            "CineMyoPS",
            ("cinemyops",),
            "The demo data of the CineMyoPS repository (multi-centre cine for myocardial "
            "pathology segmentation).",
        ),
    )
}


def dataset_names(names: Iterable[str]) -> list[str]:
    """Canonical names (DATASETS keys, or SYNTHETIC) for user-given names; unknown ones kept."""
    by_alias = {a: d.name for d in DATASETS.values() for a in (d.name.lower(), *d.aliases)}
    out = [by_alias.get(n.lower(), SYNTHETIC if n.lower() == SYNTHETIC else n) for n in names]
    return sorted(set(out))


def detect_datasets(manifest: Mapping[str, Any]) -> list[str]:
    """Datasets a shard manifest was converted from, recognised by name in its source, root,
    options and sample keys (e.g. 'npz-cinemyops_case1002' -> CineMyoPS); sorted names."""
    text = json.dumps(
        [
            manifest.get("source"),
            manifest.get("root"),
            manifest.get("source_options"),
            [(s.get("key"), s.get("source")) for s in manifest.get("samples", [])],
        ],
        default=str,
    ).lower()
    found = {d.name for d in DATASETS.values() if any(a in text for a in d.aliases)}
    if manifest.get("source") == SYNTHETIC:
        found.add(SYNTHETIC)
    return sorted(found)


def licence(datasets: Sequence[str]) -> dict[str, str]:
    """Front-matter licence fields: the project's Apache-2.0 for synthetic data only, otherwise
    'other' pointing at LICENSE.md (weights inherit the training data's non-commercial terms)."""
    if datasets and set(datasets) == {SYNTHETIC}:
        return {"license": "apache-2.0"}
    return {
        "license": "other",
        "license_name": "non-commercial-research-data",
        "license_link": LICENCE_NAME,
    }


def licence_text(datasets: Sequence[str]) -> str:
    """LICENSE.md of a folder whose weights saw third-party data."""
    lines = [
        "# Terms of use of these weights",
        "",
        "These weights were trained on cardiac MRI released for **non-commercial research only**."
        " They are offered under the same restriction: use them for non-commercial research, "
        "follow each dataset's own terms, and cite the datasets as listed below and in README.md."
        " The cmrfm code is Apache-2.0; that licence does not extend to these weights.",
        "",
        *dataset_lines(datasets),
    ]
    return "\n".join(lines) + "\n"


def write_licence(folder: Path, datasets: Sequence[str]) -> None:
    """LICENSE.md in a weights folder when its data asks for one; a stale one is removed."""
    licence_file = Path(folder) / LICENCE_NAME
    if licence(datasets).get("license_link") == LICENCE_NAME:
        licence_file.write_text(licence_text(datasets))
    elif licence_file.exists():
        licence_file.unlink()  # left from an earlier save into this folder


def dataset_lines(datasets: Sequence[str]) -> list[str]:
    """Markdown bullets of each dataset's terms and citation, for model cards."""
    if not datasets:
        return [
            "- **Unidentified data**: the training data could not be named from its manifest. "
            "Check the terms of every dataset it used before sharing these weights."
        ]
    lines = []
    for name in datasets:
        if name == SYNTHETIC:
            lines.append("- **Synthetic phantom** (generated by cmrfm): no third-party terms.")
        elif name in DATASETS:
            d = DATASETS[name]
            lines.append(f"- **{d.name}**: {d.terms}. Cite: {d.citation}")
        else:
            lines.append(
                f"- **{name}**: terms unknown to cmrfm; check them before sharing these weights."
            )
    return lines
