"""foundation.datasets: the datasets a shard manifest was converted from, recognised by name."""

from __future__ import annotations

import pytest

from foundation.datasets import SYNTHETIC, detect_datasets


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ({"source": "acdc", "root": "../shared/data/acdc/training", "samples": []}, ["ACDC"]),
        ({"source": "dicom", "root": "/data/sunnybrook/dicoms", "samples": []}, ["Sunnybrook"]),
        ({"source": "nifti", "root": "/x", "source_options": {"label_map": "mnms2"}}, ["M&Ms-2"]),
        ({"source": "lge-slices", "root": "/data/EMIDEC", "samples": []}, ["EMIDEC"]),
        (
            {"source": "npz", "root": "/x/npz", "samples": [{"key": "npz-cinemyops_case1002"},
                                                             {"key": "npz-acdc_slice_cine"}]},
            ["ACDC", "CineMyoPS"],
        ),
        ({"source": "phantom", "root": None, "samples": [{"key": "phantom-0001"}]}, [SYNTHETIC]),
        ({"source": "dicom", "root": "/data/site7", "samples": [{"key": "dicom-6a54"}]}, []),
    ],
)  # fmt: skip
def test_detect_datasets_from_a_manifest(manifest, expected) -> None:
    assert detect_datasets(manifest) == expected
