"""`cmrfm predict --deidentify`: strip the patient and study references from the DICOM objects
predict writes (SEG and SR, cmrfm.dicom_out) for sharing, following the Basic Application Level
Confidentiality Profile of DICOM PS3.15 Annex E (Table E.1-1).

What the profile asks, applied to every element at any depth (sequences included):

* UIDs are replaced by new ones (U), one map for all the objects of a study, so the SR still
  references the SEG and both the same (new) study, series and source instances; UIDs that name
  a standard thing (SOP classes, transfer syntaxes, coding schemes, DICOM's own UIDs) stay;
* names (every PN), patient id, accession number and study id are emptied (Z);
* dates and times are emptied (Z), those an IOD needs (Type 1: ContentDate, ContentTime) get a
  dummy value (D); other attributes that may identify (age, size, weight, addresses,
  institution, station, descriptions, other ids) are removed (X), and so is every private one;
* PatientIdentityRemoved YES, DeidentificationMethod(CodeSequence) (DCM 113100) and
  LongitudinalTemporalInformationModified REMOVED record what was done.

The measurement content (codes, numbers, tracking labels) is cmrfm's own and holds no
identifier; what the SEG frames and the SR reference keeps pointing at each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DICOM_ROOT = "1.2.840.10008."  # UIDs DICOM itself defines: never an instance's
# UID attributes that name a kind of thing, not an instance, a study or a person
KEEP_UIDS = frozenset({
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "CodingSchemeUID", "ContextUID", "MappingResourceUID",
    "PrivateCodingSchemeCreatorUID", "ContextGroupExtensionCreatorUID",
    "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile",
    "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "SOPClassesInStudy",
})  # fmt: skip
EMPTY = frozenset({"PatientID", "AccessionNumber", "StudyID"})  # Z (names, dates: by VR)
DUMMY = {"ContentDate": "19000101", "ContentTime": "000000", "DeviceSerialNumber": "0"}  # D
REMOVE = frozenset({  # X
    "PatientAge", "PatientSize", "PatientWeight", "PatientAddress", "PatientBirthTime",
    "PatientTelephoneNumbers", "PatientComments", "AdditionalPatientHistory", "EthnicGroup",
    "Occupation", "MedicalRecordLocator", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "IssuerOfPatientID",
    "MilitaryRank", "BranchOfService", "RegionOfResidence", "CountryOfResidence",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "InstitutionCodeSequence", "StationName", "OperatorsName", "PerformingPhysicianName",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy", "RequestingPhysician",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "StudyDescription",
    "SeriesDescription", "AdmittingDiagnosesDescription", "RequestAttributesSequence",
    "ReferencedPatientSequence", "ReferencedStudySequence", "PerformedProcedureStepID",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription",
    "ScheduledProcedureStepID", "ImageComments", "InstanceCreatorUID", "AcquisitionDate",
    "AcquisitionTime", "AcquisitionDateTime", "SeriesDate", "SeriesTime",
    "InstanceCreationDate", "InstanceCreationTime", "ContributionDateTime",
})  # fmt: skip
NAMES_AND_TIMES = ("PN", "DA", "DT", "TM")  # emptied wherever they are (Z), unless D or X
METHOD = "DICOM PS3.15 Basic Application Level Confidentiality Profile"  # LO: 64 at most
PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")


def deidentify(datasets: Sequence[Any]) -> dict[str, str]:
    """Apply the profile, in place, to ``datasets`` (pydicom or highdicom datasets of one
    study) with one UID map, so their references to each other stay consistent.

    Returns the UID map (old -> new), for tests; never write it anywhere.
    """
    uids: dict[str, str] = {}
    for ds in datasets:
        _clean(ds, uids)
        if getattr(ds, "file_meta", None) is not None:
            _clean(ds.file_meta, uids)
        _record(ds)
    return uids


def _clean(ds: Any, uids: dict[str, str]) -> None:
    """One dataset (and its sequences' items, recursively) through the profile's actions.

    Elements are replaced, not changed: highdicom shares element objects with the source
    headers it copied them from, and the datasets of one call may share items.
    """
    from pydicom.dataelem import DataElement

    for element in list(ds):
        keyword, value = element.keyword, element.value
        if element.tag.is_private or keyword in REMOVE:
            del ds[element.tag]
            continue
        if element.VR == "SQ":
            for item in value:
                _clean(item, uids)
            continue
        if keyword in DUMMY:
            value = DUMMY[keyword]
        elif keyword in EMPTY or element.VR in NAMES_AND_TIMES:
            value = ""
        elif element.VR == "UI" and keyword not in KEEP_UIDS and value:
            value = _new_uids(value, uids)
        if value is not element.value:
            ds[element.tag] = DataElement(element.tag, element.VR, value)


def _new_uids(value: Any, uids: dict[str, str]) -> Any:
    """The replacement of a UI value (one UID or several), the same for the same UID."""
    from pydicom.uid import generate_uid

    new = set(uids.values())

    def one(uid: str) -> str:
        uid = str(uid)
        if uid.startswith(DICOM_ROOT) or not uid or uid in new:  # a shared item: done already
            return uid
        return uids.setdefault(uid, generate_uid())

    if isinstance(value, str):
        return one(value)
    return [one(v) for v in value]


def _record(ds: Any) -> None:
    """The attributes that say the profile was applied (PS3.15 E.1.1, PS3.3 C.7.1.1)."""
    from highdicom.sr import CodedConcept

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    ds.DeidentificationMethodCodeSequence = [CodedConcept(*PROFILE)]
    ds.LongitudinalTemporalInformationModified = "REMOVED"
