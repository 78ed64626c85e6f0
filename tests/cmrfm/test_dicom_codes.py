"""The coded concepts of the DICOM outputs (cmrfm/dicom_codes.py): every SNOMED CT and LOINC code
is the concept its meaning says (as PS3.16, through pydicom's tables, has it), local codes use
the private scheme, and every value the SR reports is one predict computes."""

from __future__ import annotations

import numpy as np
from pydicom.sr._concepts_dict import concepts

from cmrfm.dicom_codes import GROUPS, PRIVATE_SCHEME, SEGMENTS, coding_schemes
from cmrfm.predict import scar_volumes, ventricular_volumes
from data_shards.record import INFARCT, LV, MVO, MYO, RV

# Standard codes that pydicom's tables (DICOM's context groups) do not hold, checked elsewhere:
# SNOMED CT 55641003 is "Infarct (morphologic abnormality)".
NOT_IN_PS3_16 = {("55641003", "SCT"), ("ml", "UCUM"), ("g", "UCUM")}


def used_concepts() -> set[tuple[str, str, str]]:
    found = set()
    for _, category, kind in SEGMENTS.values():
        found |= {category, kind}
    for _, finding, site, _, measures in GROUPS:
        found |= {finding} | ({site} if site else set())
        found |= {c for _, concept, unit in measures for c in (concept, unit)}
    return found


def meanings() -> dict[tuple[str, str], set[str]]:
    index: dict[tuple[str, str], set[str]] = {}
    for scheme, keywords in concepts.items():
        for entries in keywords.values():
            for value, (meaning, _) in entries.items():
                index.setdefault((value, scheme), set()).add(meaning.lower())
    return index


def test_standard_codes_mean_what_they_say():
    known = meanings()
    for value, scheme, meaning in used_concepts():
        if scheme == PRIVATE_SCHEME or (value, scheme) in NOT_IN_PS3_16:
            continue
        said = known.get((value, scheme))
        assert said, f"{scheme} {value} ({meaning}) is not in PS3.16"
        assert any(m.startswith(meaning.lower()) for m in said), (value, meaning, said)


def test_local_codes_are_declared_only_where_used():
    assert SEGMENTS[MVO][2][1] == PRIVATE_SCHEME
    assert coding_schemes([SEGMENTS[LV][2], SEGMENTS[MYO][2]]) is None
    (item,) = coding_schemes([SEGMENTS[LV][2], SEGMENTS[MVO][2]])
    assert item.CodingSchemeDesignator == PRIVATE_SCHEME


def test_every_reported_key_is_one_predict_computes():
    """A misspelt key would drop its measurement from the SR without a word."""
    labels = np.zeros((2, 3, 16, 16), np.uint8)
    labels[:, :, 4:12, 4:12] = MYO
    labels[:, :, 6:10, 6:10] = LV
    labels[:, 0, 6:8, 6:8] = INFARCT
    labels[:, 0, 6, 6] = MVO
    labels[:, :, 0:3, 0:3] = RV
    volumes = ventricular_volumes(labels, (8.0, 1.5, 1.5))
    volumes["scar"] = scar_volumes(labels, (8.0, 1.5, 1.5), 0)
    for name, _, _, section, measures in GROUPS:
        for key, _, _ in measures:
            assert key in volumes[section], (name, section, key)
    assert set(SEGMENTS) == {LV, MYO, RV, INFARCT, MVO}
