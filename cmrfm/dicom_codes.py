"""The coded concepts of cmrfm's DICOM outputs (cmrfm.dicom_out): what each segment of the SEG
is, and which measurement of the SR reports which value of volumes.json, with its unit.

SNOMED CT (SCT) for anatomy and findings, LOINC (LN) for the ventricular volumes, EF by MR and
LV mass, UCUM for units; MVO has no code in PS3.16, so it gets a local one (designator 99CMRFM,
identified in the objects' CodingSchemeIdentificationSequence).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from data_shards.record import INFARCT, LV, MVO, MYO, RV

Concept = tuple[str, str, str]  # (code value, coding scheme designator, code meaning)
ANATOMY: Concept = ("91723000", "SCT", "Anatomical Structure")
ABNORMAL: Concept = ("49755003", "SCT", "Morphologically Abnormal Structure")
LV_MYOCARDIUM: Concept = ("49848007", "SCT", "Left Ventricle Myocardium")
PRIVATE_SCHEME = "99CMRFM"  # local codes (PS3.16 8.2: designators starting "99")
# label value -> segment label, property category, property type
SEGMENTS: dict[int, tuple[str, Concept, Concept]] = {
    LV: ("LV cavity", ANATOMY, ("87878005", "SCT", "Left ventricle")),
    MYO: ("LV myocardium", ANATOMY, LV_MYOCARDIUM),
    RV: ("RV cavity", ANATOMY, ("53085002", "SCT", "Right ventricle")),
    INFARCT: ("Infarct", ABNORMAL, ("55641003", "SCT", "Infarct")),
    MVO: ("MVO", ABNORMAL, ("MVO", PRIVATE_SCHEME, "Microvascular obstruction")),
}
ML: Concept = ("ml", "UCUM", "milliliter")
GRAM: Concept = ("g", "UCUM", "gram")
PERCENT: Concept = ("%", "UCUM", "Percent")
VOLUME: Concept = ("118565006", "SCT", "Volume")
EXTENT: Concept = ("260858005", "SCT", "Extent")
# Measurement groups: name, finding type, finding site, volumes.json section, its measurements
# (key, concept, unit). LOINC's ventricular volumes and EF by MR, SNOMED's stroke volumes.
GROUPS: tuple[tuple[str, Concept, Concept | None, str, tuple], ...] = (
    ("Left ventricle", ("87878005", "SCT", "Left ventricle"), None, "lv", (
        ("edv_ml", ("8821-1", "LN", "Left Ventricular ED Volume"), ML),
        ("esv_ml", ("8823-7", "LN", "Left Ventricular ES Volume"), ML),
        ("sv_ml", ("90096001", "SCT", "Stroke Volume"), ML),
        ("ef_percent", ("8811-2", "LN", "Left ventricular ejection fraction by MR"), PERCENT),
        ("mass_g", ("18087-7", "LN", "Left Ventricle Mass"), GRAM),
    )),
    ("Right ventricle", ("53085002", "SCT", "Right ventricle"), None, "rv", (
        ("edv_ml", ("8822-9", "LN", "Right Ventricular ED Volume"), ML),
        ("esv_ml", ("8824-5", "LN", "Right Ventricular ES Volume"), ML),
        ("sv_ml", ("429483009", "SCT", "RV Stroke Volume"), ML),
        ("ef_percent", ("8818-7", "LN", "Right ventricular ejection fraction by MR"), PERCENT),
    )),
    ("Infarct", SEGMENTS[INFARCT][2], LV_MYOCARDIUM, "scar", (
        ("infarct_ml", VOLUME, ML),  # MVO included, as volumes.json counts it
        ("infarct_pct", EXTENT, PERCENT),  # of the LV myocardium
    )),
    ("Microvascular obstruction", SEGMENTS[MVO][2], LV_MYOCARDIUM, "scar", (
        ("mvo_ml", VOLUME, ML),
        ("mvo_pct", EXTENT, PERCENT),
    )),
)  # fmt: skip


def code(concept: Concept) -> Any:
    """pydicom's Code of a (value, designator, meaning) triple."""
    from pydicom.sr.coding import Code

    return Code(*concept)


def coding_schemes(concepts: Iterable[Concept]) -> list[Any] | None:
    """CodingSchemeIdentificationSequence items for PRIVATE_SCHEME if ``concepts`` use it
    (PS3.3 C.12.1.1.4: a designator PS3.16 does not list is identified), else None."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    if all(concept[1] != PRIVATE_SCHEME for concept in concepts):
        return None
    return [
        CodingSchemeIdentificationItem(
            PRIVATE_SCHEME, name="cmrfm local codes", responsible_organization="cmrfm"
        )
    ]
