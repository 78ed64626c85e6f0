"""Identifying DICOM header values, and every form in which they could leak."""

from __future__ import annotations

import re

from pydicom.uid import generate_uid


def identity(n: int) -> dict[str, str]:
    """Header values that identify patient n, the visit, the staff or the site."""
    return {
        "PatientName": f"Quixote{n}^Alonso",
        "PatientID": f"PID867530{n}",
        "OtherPatientIDs": f"OPX441{n}",
        "PatientBirthDate": f"1923051{n}",
        "PatientAddress": f"{n}2 Windmill Lane",
        "InstitutionName": "Saint Elsewhere Hospital",
        "InstitutionAddress": "1 Hospital Road Springfield",
        "StationName": "MRSTATION77",
        "DeviceSerialNumber": "SN998877",
        "AccessionNumber": f"ACC42424{n}",
        "StudyID": f"STX515{n}",
        "StudyDate": f"2019031{n}",
        "SeriesDate": f"2019041{n}",
        "AcquisitionDate": f"2019051{n}",
        "ContentDate": f"2019061{n}",
        "StudyTime": f"13471{n}.123456",
        "SeriesTime": f"13550{n}",
        "ReferringPhysicianName": "Kildare^James",
        "PerformingPhysicianName": "Casey^Benedict",
        "OperatorsName": "Houlihan^Margaret",
        # A component with a leading zero is not a valid UID: pydicom warns quoting the value.
        "SeriesInstanceUID": f"1.2.826.0.1.3680043.8.498.0{n}7731",
        "StudyInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
    }


def search_terms(value: str) -> set[str]:
    """The value as written, in lower and upper case, split into name parts and date formats."""
    terms = {value}
    terms |= set(value.split("^"))
    if re.fullmatch(r"\d{8}", value):  # DA: also as an ISO date
        terms.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    if re.fullmatch(r"\d{6}(\.\d+)?", value):  # TM: also hh:mm:ss and without fraction
        terms |= {value[:6], f"{value[:2]}:{value[2:4]}:{value[4:6]}"}
    terms |= {t.lower() for t in terms} | {t.upper() for t in terms}
    return {t for t in terms if len(t) >= 5}
