"""`--deidentify` (cmrfm/dicom_deidentify.py): the Basic Application Level Confidentiality
Profile on datasets of one study: instance UIDs replaced consistently across them (references
still resolve), standard UIDs kept, names, ids and dates emptied (Type 1 dates dummied), other
identifying and private attributes removed, the method recorded, and the source untouched."""

from __future__ import annotations

import copy

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import MRImageStorage, SegmentationStorage, generate_uid

from cmrfm.dicom_deidentify import deidentify

STUDY, SOURCE, FRAME_OF_REFERENCE = generate_uid(), generate_uid(), generate_uid()


def reference(uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = MRImageStorage
    item.ReferencedSOPInstanceUID = uid
    return item


def made(uid: str, source: Dataset, shared: Dataset) -> Dataset:
    """A SEG-like dataset of patient Quixote that references ``source``; it shares an element
    object with ``source`` (as highdicom's copies do) and the item ``shared`` with the other."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID, ds.SOPInstanceUID = SegmentationStorage, uid
    ds.add(source["StudyInstanceUID"])  # the very element object of the source
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Quixote^Alonso", "PID8675309", "19230511"
    ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20190311", "134711", "20260101", "101010"  # fmt: skip
    ds.InstitutionName, ds.PatientAge, ds.SeriesDescription = "Saint Elsewhere", "042Y", "x"
    ds.ReferencedImageSequence = [reference(source.SOPInstanceUID), shared]
    observer = Dataset()
    observer.PersonName = "Kildare^James"
    ds.ContentSequence = [observer]
    ds.add_new(0x00091010, "LO", "private note of PID8675309")
    return ds


def test_the_profile_replaces_uids_consistently_and_strips_the_rest():
    source = Dataset()
    source.SOPInstanceUID, source.StudyInstanceUID = SOURCE, STUDY
    kept = copy.deepcopy(source)
    shared = reference(SOURCE)  # one item in both datasets' sequences
    seg_uid, sr_uid = generate_uid(), generate_uid()
    seg, sr = made(seg_uid, source, shared), made(sr_uid, source, shared)
    sr.ReferencedImageSequence.append(reference(seg_uid))

    uids = deidentify([seg, sr])

    assert set(uids) == {STUDY, SOURCE, FRAME_OF_REFERENCE, seg_uid, sr_uid}
    assert not set(uids.values()) & set(uids)
    for ds in (seg, sr):
        assert ds.StudyInstanceUID == uids[STUDY]
        assert ds.FrameOfReferenceUID == uids[FRAME_OF_REFERENCE]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == SegmentationStorage
        first, again = ds.ReferencedImageSequence[:2]
        assert first.ReferencedSOPInstanceUID == uids[SOURCE] == again.ReferencedSOPInstanceUID
        assert first.ReferencedSOPClassUID == MRImageStorage
        assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate) == ("", "", "")
        assert (ds.StudyDate, ds.StudyTime) == ("", "")
        assert (ds.ContentDate, ds.ContentTime) == ("19000101", "000000")  # Type 1: dummy
        assert str(ds.ContentSequence[0].PersonName) == ""
        for gone in ("InstitutionName", "PatientAge", "SeriesDescription"):
            assert gone not in ds
        assert not any(element.tag.is_private for element in ds)
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert ds.LongitudinalTemporalInformationModified == "REMOVED"
    assert seg.SOPInstanceUID == uids[seg_uid] == sr.ReferencedImageSequence[2].ReferencedSOPInstanceUID  # fmt: skip
    assert source == kept  # the source's own elements are not changed


def test_a_second_call_mints_other_uids():
    """Two shares of one study do not link up through their UIDs."""
    source = Dataset()
    source.SOPInstanceUID, source.StudyInstanceUID = SOURCE, STUDY
    one, two = (made(generate_uid(), source, reference(SOURCE)) for _ in range(2))
    assert deidentify([one])[STUDY] != deidentify([two])[STUDY]
