"""No patient identifier from a DICOM header reaches any output, and subject ids are salted."""

from __future__ import annotations

import io
import json
import logging
import re
import stat
import tarfile
import warnings
from io import StringIO
from pathlib import Path

import pydicom
import pytest
from helpers import DATA
from helpers.dicom import write_stack
from helpers.privacy import identity, search_terms
from pydicom import config as pydicom_config
from rich.console import Console

from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig
from data_shards.privacy import (
    anonymous_id,
    default_salt,
    input_ref,
    local_inputs,
    salt_path,
    scrub,
)
from data_shards.sources.dicom import dicom

SUNNYBROOK = DATA / "sunnybrook"

# What a source may put in meta: geometry, timing and kit, nothing about the person or visit.
ALLOWED_META = {
    "source", "modality", "ed", "es", "split_group", "group", "label_classes",
    "direction", "origin", "trigger_times_ms", "manufacturer", "field_strength_t",
    "frame_order", "frame_times_ms",  # a tag's name; times relative to the first frame
    "slice_gaps_mm",  # distances between neighbouring slices, not positions
}  # fmt: skip


def make_cohort(root: Path) -> set[str]:
    """Two good studies and one broken one, in folders named by PatientID as exports often are
    (the broken one's files too); returns every identifying string written."""
    written: set[str] = set()
    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")  # the invalid UID is the point
        for n in (1, 2, 3):
            tags = identity(n)
            paths = write_stack(root / tags["PatientID"], Manufacturer="ACME", **tags)
            written |= set(tags.values())
            for path in paths.values():
                ds = pydicom.dcmread(path)
                written |= {ds.SOPInstanceUID, ds.file_meta.MediaStorageSOPInstanceUID}
            if n == 3:  # a truncated image: the study lands in quarantine.json
                paths = {k: p.rename(p.with_name(f"{tags['PatientID']}_{p.name}"))
                         for k, p in paths.items()}  # fmt: skip
                broken = paths[1, 1]
                broken.write_bytes(broken.read_bytes()[:-30])
    return written


def output_bytes(out: Path) -> list[tuple[str, bytes]]:
    """Every output file, and every member of every tar shard, as (name, bytes)."""
    found = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        found.append((str(path), path.read_bytes()))
        if path.suffix == ".tar":
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    found.append((f"{path}:{member.name}", tar.extractfile(member).read()))
                    found.append((f"{path}:{member.name} (name)", member.name.encode()))
    return found


def run(
    root: Path, out: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, **options
) -> tuple[dict, list]:
    """Convert with the salt from ``cache``; returns the manifest and every byte it produced."""
    monkeypatch.setenv("CMRFM_CACHE", str(cache))
    console_text = StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = convert(
            "dicom",
            root,
            out,
            preprocess_config=PreprocessConfig(spacing=1.5, size=16),
            console=Console(file=console_text, width=200),
            source_options=options,
        )
    texts = [("console", console_text.getvalue().encode())]
    texts += [("warning", str(w.message).encode()) for w in caught]
    return manifest, output_bytes(out) + texts


def assert_nothing_identifying(found: list[tuple[str, bytes]], written: set[str]) -> None:
    terms = set().union(*(search_terms(v) for v in written))
    leaks = [(name, term) for name, data in found for term in terms if term.encode() in data]
    assert not leaks, leaks


def without_local_paths(text: str, root: Path) -> str:
    """Terminal text less the local paths under ``root``, which the operator may be shown."""
    return re.sub(re.escape(str(root)) + r"\S*", "<path>", text)


def test_no_identifier_reaches_any_output(tmp_path, monkeypatch, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "root"
    written = make_cohort(root)
    cache = tmp_path / "cache"
    manifest, found = run(root, tmp_path / "out", cache, monkeypatch)
    assert len(manifest["samples"]) == 2 and manifest["quarantined"] == 1
    captured = capfd.readouterr()
    terminal = [(name, data) for name, data in found if name in ("console", "warning")]
    files = [(name, data) for name, data in found if (name, data) not in terminal]
    terminal += [("stdout", captured.out.encode()), ("stderr", captured.err.encode())]
    terminal += [("log", caplog.text.encode())]
    written.add(salt_path().read_text().strip())  # the salt must never be written either
    assert_nothing_identifying(files, written)
    # The terminal names the local path of what was quarantined, and nothing else identifying.
    broken = root / identity(3)["PatientID"]
    assert any(str(broken).encode() in data for name, data in terminal if name == "console")
    shown = [(n, without_local_paths(d.decode(), root).encode()) for n, d in terminal]
    assert_nothing_identifying(shown, written)


def test_quarantined_inputs_are_named_by_keyed_id_and_found_again_locally(tmp_path, monkeypatch):
    """quarantine.json names an unreadable study by a keyed id and position, with a reason that
    spells no local name; the machine that made it maps the id back to the folder."""
    root = tmp_path / "root"
    make_cohort(root)
    run(root, tmp_path / "out", tmp_path / "cache", monkeypatch)
    (entry,) = json.loads((tmp_path / "out" / "quarantine.json").read_text())
    assert set(entry) == {"input", "position", "reason"}
    assert re.fullmatch(r"input-[0-9a-f]{12}", entry["input"])
    assert entry["position"] == 3  # the third study folder in sorted order
    assert entry["reason"].startswith("unreadable pixel data")
    broken = root / identity(3)["PatientID"]
    found = local_inputs(root, {entry["input"]}, default_salt())
    assert found[entry["input"]] in (broken, *broken.rglob("*"))


def test_scrub_replaces_every_local_name_and_keeps_the_rest(tmp_path):
    folder = tmp_path / "PID8675309"
    folder.mkdir()
    (folder / "PID8675309_7.dcm").touch()
    (folder / "PID8675309_8.dcm").touch()
    text = (f"{folder / 'PID8675309_8.dcm'}: pixel spacing differs from PID8675309_7.dcm's; "
            "PID8675309 is short; rows 256")  # fmt: skip
    ref = input_ref(folder / "PID8675309_8.dcm", tmp_path, "s")
    clean = scrub(text, folder / "PID8675309_8.dcm", tmp_path, ref)
    assert "PID8675309" not in clean and str(tmp_path) not in clean
    assert clean == f"{ref}: pixel spacing differs from {ref}'s; {ref} is short; rows 256"


def test_a_salt_given_as_an_option_is_never_written(tmp_path, monkeypatch):
    salt = "option-salt-5f3a9c1e77d2"
    write_stack(tmp_path / "root" / "study_one", **identity(1))
    manifest, found = run(
        tmp_path / "root", tmp_path / "out", tmp_path / "c", monkeypatch, salt=salt
    )
    assert len(manifest["samples"]) == 1
    assert manifest["source_options"] == {"salt": "<redacted>"}
    assert_nothing_identifying(found, {salt})


def test_meta_holds_only_allowed_keys(tmp_path):
    make_cohort(tmp_path)
    subjects = [s for s in dicom(tmp_path, salt="s") if hasattr(s, "meta")]
    assert len(subjects) == 2
    for subject in subjects:
        assert set(subject.meta) <= ALLOWED_META, set(subject.meta) - ALLOWED_META
        assert subject.meta["manufacturer"] == "ACME"


def test_subject_ids_are_stable_per_salt(tmp_path, monkeypatch):
    make_cohort(tmp_path / "root")
    ids = {}
    for run_name, cache in (("first", "a"), ("again", "a"), ("other_salt", "b")):
        manifest, _ = run(tmp_path / "root", tmp_path / run_name, tmp_path / cache, monkeypatch)
        ids[run_name] = [s["subject"] for s in manifest["samples"]]
    assert ids["first"] == ids["again"]
    assert all(re.fullmatch(r"dicom-[0-9a-f]{12}", s) for s in ids["first"])
    assert set(ids["first"]).isdisjoint(ids["other_salt"])


def test_anonymous_id_is_a_keyed_hash():
    a = anonymous_id("PID8675309", "salt-1", "dicom")
    assert a == anonymous_id("PID8675309", "salt-1", "dicom")
    assert re.fullmatch(r"dicom-[0-9a-f]{12}", a)
    assert a != anonymous_id("PID8675309", "salt-2", "dicom")
    assert a != anonymous_id("PID8675308", "salt-1", "dicom")
    with pytest.raises(ValueError, match="salt"):
        anonymous_id("PID8675309", "", "dicom")


def test_default_salt_is_created_once_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CMRFM_CACHE", str(tmp_path / "cache"))
    salt = default_salt()
    path = tmp_path / "cache" / "id_salt"
    assert path.read_text().strip() == salt and len(salt) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert default_salt() == salt
    monkeypatch.delenv("CMRFM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert salt_path() == tmp_path / "home" / ".cache" / "cmrfm" / "id_salt"
    assert default_salt() != salt


@pytest.mark.realdata
@pytest.mark.skipif(not SUNNYBROOK.exists(), reason="needs ../shared/data/sunnybrook")
def test_real_sunnybrook_headers_stay_out_of_outputs(tmp_path, monkeypatch):
    """Sunnybrook headers carry names, ids, dates, times and (invalid) UIDs: none may leak."""
    written: set[str] = set()
    keywords = ["PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                "SOPInstanceUID", "FrameOfReferenceUID", "DeviceSerialNumber", "StudyDate",
                "StudyTime", "SeriesTime"]  # fmt: skip
    with pydicom_config.disable_value_validation():
        for path in sorted(SUNNYBROOK.glob("dicoms/SCD0000301/*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            written |= {str(ds.get(k)) for k in keywords if ds.get(k)}
    assert "SCD0000301" in written  # also the folder's name, which must not leak from there

    manifest, found = run(SUNNYBROOK, tmp_path / "out", tmp_path / "cache", monkeypatch, limit=1)
    assert len(manifest["samples"]) == 1
    assert_nothing_identifying(found, written)


def test_leak_search_finds_planted_identifiers():
    """The search itself: a planted id in a tar member or JSON, any case, is found."""
    member = tarfile.TarInfo("key.meta.json")
    data = b'{"note": "quixote1 was here"}'
    member.size = len(data)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.addfile(member, io.BytesIO(data))
    shard = [("shard.tar", buffer.getvalue())]
    with pytest.raises(AssertionError, match="quixote1"):
        assert_nothing_identifying(shard, {"Quixote1^Alonso"})
    with pytest.raises(AssertionError, match="2019-03-11"):
        assert_nothing_identifying([("m.json", b"2019-03-11")], {"20190311"})
