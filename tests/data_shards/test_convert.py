"""data_shards.convert: bad subjects never stop a conversion; a killed one resumes losslessly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.convert import blank_cases
from rich.console import Console

from data_shards import convert as convert_module
from data_shards import sources
from data_shards.convert import PROGRESS, convert
from data_shards.preprocess import PreprocessConfig
from data_shards.privacy import default_salt, input_ref
from data_shards.record import IGNORE, LV, Subject
from data_shards.sources import SourceError
from data_shards.stream import load_subjects
from data_shards.writer import verify_manifest

CONFIG = PreprocessConfig(spacing=1.5, size=12)
# What the stand-in source does beyond its options, so a test can change it between runs
# without changing the conversion's fingerprint.
BEHAVIOUR: dict = {"die_after": None, "error": RuntimeError, "broken": set()}


def make_subject(i: int) -> Subject:
    rng = np.random.default_rng(i)
    image = rng.normal(100, 30, (2, 2, 20, 16)).astype(np.float32)
    label = None
    if i % 3 != 1:
        label = np.zeros(image.shape, np.uint8)
        label[:, 0, 6 + i % 4 : 12, 5:11] = LV
        label[:, 1] = IGNORE
    meta = {"source": "resumable", "modality": "cine", "ed": 0}
    return Subject(f"case{i}", image, label, (8.0, 1.2, 1.2), meta)


def resumable(root: Path | None, n: int = 9, bad_file: bool = True):
    """``n`` subjects (an unreadable file after case2); dies or breaks as BEHAVIOUR says."""
    for i in range(n):
        if BEHAVIOUR["die_after"] == i:
            raise BEHAVIOUR["error"]("the job dies here")
        subject = make_subject(i)
        if subject.subject in BEHAVIOUR["broken"]:
            subject.spacing = (8.0, 0.0, 1.2)  # preprocess rejects it
        yield subject
        if i == 2 and bad_file:
            yield SourceError(Path("/data/case_bad.nii.gz"), "truncated gzip stream")


def bad_file_entry() -> dict:
    """The quarantine entry of the stand-in's unreadable file: a keyed id and its position (the
    4th item the source yields), never its path."""
    ref = input_ref("/data/case_bad.nii.gz", None, default_salt())
    return {"input": ref, "position": 4, "reason": "truncated gzip stream"}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Register the stand-in source; the list fills with the subjects preprocess sees."""
    monkeypatch.setitem(sources.SOURCES, "resumable", resumable)
    monkeypatch.setitem(BEHAVIOUR, "die_after", None)
    monkeypatch.setitem(BEHAVIOUR, "broken", set())
    seen: list[str] = []
    real = convert_module.preprocess

    def counting(subject: Subject, config: PreprocessConfig) -> Subject:
        seen.append(subject.subject)
        return real(subject, config)

    monkeypatch.setattr(convert_module, "preprocess", counting)
    return seen


def run(out: Path, **kwargs) -> tuple[dict, str]:
    console = Console(file=io.StringIO(), width=200)
    kwargs = {"preprocess_config": CONFIG, "maxcount": 2, "console": console, **kwargs}
    manifest = convert("resumable", None, out, **kwargs)
    return manifest, console.file.getvalue()


def contents(out: Path) -> dict[str, tuple[bytes, bytes | None, dict]]:
    """subject -> (image bytes, label bytes, meta) as a reader of the shards gets them."""
    return {
        s["meta"]["subject"]: (
            s["image"].tobytes(),
            None if s["label"] is None else s["label"].tobytes(),
            s["meta"],
        )
        for s in load_subjects(out)
    }


def shard_stats(out: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*.tar")}


def assert_complete(out: Path, manifest: dict, reference: Path) -> None:
    subjects = [s["subject"] for s in manifest["samples"]]
    assert sorted(subjects) == [f"case{i}" for i in range(9)]  # each exactly once
    assert verify_manifest(out) == []
    assert contents(out) == contents(reference)
    assert json.loads((out / "quarantine.json").read_text()) == json.loads(
        (reference / "quarantine.json").read_text()
    )


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_killed_conversion_resumes_without_redoing_kept_shards(
    tmp_path: Path, calls: list[str], monkeypatch: pytest.MonkeyPatch, error: type
) -> None:
    reference = tmp_path / "one_go"
    run(reference)
    calls.clear()

    out = tmp_path / "resumed"
    monkeypatch.setitem(BEHAVIOUR, "die_after", 5)
    monkeypatch.setitem(BEHAVIOUR, "error", error)
    with pytest.raises(error):
        run(out)
    assert not (out / "manifest.json").exists()  # only a finished conversion has one
    journal = json.loads((out / PROGRESS).read_text())
    assert not journal["complete"]
    journaled = [shard["name"] for shard in journal["shards"]]
    assert journaled == ["shard-000000.tar", "shard-000001.tar"]  # 4 subjects in full shards
    assert journal["quarantine"] == [bad_file_entry()]
    assert (out / "shard-000002.tar").exists()  # case4, half a shard, not journaled
    before = shard_stats(out)

    calls.clear()
    monkeypatch.setitem(BEHAVIOUR, "die_after", None)
    manifest, _ = run(out)
    assert calls == [f"case{i}" for i in range(4, 9)]  # kept subjects are not preprocessed again
    after = shard_stats(out)
    assert all(after[name] == before[name] for name in journaled)  # not rewritten
    assert [s["name"] for s in manifest["shards"]] == [f"shard-{i:06d}.tar" for i in range(5)]
    assert_complete(out, manifest, reference)


def test_finished_conversion_is_a_noop(tmp_path: Path, calls: list[str]) -> None:
    options = {"n": 5, "bad_file": False}  # nothing quarantined, so nothing to retry
    first, _ = run(tmp_path, source_options=options)
    first_stats = shard_stats(tmp_path)
    calls.clear()
    again, text = run(tmp_path, source_options=options)
    assert calls == [] and "nothing to do" in text
    assert shard_stats(tmp_path) == first_stats
    assert {k: v for k, v in again.items() if k != "created"} == {
        k: v for k, v in first.items() if k != "created"
    }
    assert verify_manifest(tmp_path) == []


def test_corrupt_kept_shard_is_detected_and_reconverted(tmp_path: Path, calls: list[str]) -> None:
    reference = tmp_path / "one_go"
    run(reference)
    out = tmp_path / "out"
    run(out)
    path = out / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF  # inside the first member's payload
    path.write_bytes(bytes(data))
    calls.clear()

    manifest, text = run(out)
    assert "shard-000001.tar" in text and "corrupt" in text
    assert calls == [
        "case2",
        "case3",
    ]  # only the corrupt shard's subjects (the quarantine is empty)
    names = [s["name"] for s in manifest["shards"]]
    assert "shard-000001.tar" not in names and names[-1] == "shard-000005.tar"
    assert not path.exists()
    assert_complete(out, manifest, reference)


def test_quarantined_subjects_are_retried(tmp_path: Path, calls: list[str], monkeypatch) -> None:
    monkeypatch.setitem(BEHAVIOUR, "broken", {"case4"})
    manifest, _ = run(tmp_path)
    assert "case4" not in [s["subject"] for s in manifest["samples"]]
    assert manifest["quarantined"] == 2
    calls.clear()
    monkeypatch.setitem(BEHAVIOUR, "broken", set())  # someone fixed the file
    manifest, _ = run(tmp_path)
    assert calls == ["case4"]
    assert manifest["quarantined"] == 1  # the unreadable file is still unreadable
    assert sorted(s["subject"] for s in manifest["samples"]) == [f"case{i}" for i in range(9)]
    assert verify_manifest(tmp_path) == []


def test_different_settings_refuse_unless_overwrite(tmp_path: Path, calls: list[str]) -> None:
    run(tmp_path, source_options={"n": 3})
    other = PreprocessConfig(spacing=1.5, size=16)
    with pytest.raises(FileExistsError, match=r"preprocess.*--overwrite"):
        run(tmp_path, source_options={"n": 3}, preprocess_config=other)
    with pytest.raises(FileExistsError, match=r"source_options"):
        run(tmp_path, source_options={"n": 2})
    calls.clear()
    manifest, _ = run(tmp_path, source_options={"n": 3}, preprocess_config=other, overwrite=True)
    assert calls == ["case0", "case1", "case2"]
    assert manifest["preprocess"]["size"] == 16 and verify_manifest(tmp_path) == []
    assert {s["shape"][-1] for s in manifest["samples"]} == {16}


def test_manifest_journal_and_shards_record_the_config_as_to_dict(
    tmp_path: Path, calls: list[str]
) -> None:
    config = PreprocessConfig(spacing=1.25, size=16, percentiles=(1.0, 99.0), crop="label")
    run(tmp_path, source_options={"n": 3}, preprocess_config=config)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    journal = json.loads((tmp_path / PROGRESS).read_text())
    recorded = [manifest["preprocess"], journal["fingerprint"]["preprocess"]]
    recorded += [s["meta"]["preprocess"] for s in load_subjects(tmp_path)]
    assert all(r == config.to_dict() for r in recorded)
    assert PreprocessConfig.from_dict(manifest["preprocess"], "manifest.json") == config


def test_no_resume_starts_over(tmp_path: Path, calls: list[str]) -> None:
    run(tmp_path, source_options={"n": 3})
    calls.clear()
    _, text = run(tmp_path, source_options={"n": 3}, resume=False)
    assert calls == ["case0", "case1", "case2"] and "nothing to do" not in text
    assert verify_manifest(tmp_path) == []


def test_folder_from_an_older_conversion_is_not_silently_replaced(
    tmp_path: Path, calls: list[str]
) -> None:
    run(tmp_path, source_options={"n": 3})
    (tmp_path / PROGRESS).unlink()  # as written before journals existed
    with pytest.raises(FileExistsError, match=PROGRESS):
        run(tmp_path, source_options={"n": 3})


def test_source_error_in_the_middle_still_writes_the_rest(tmp_path: Path, calls: list[str]) -> None:
    BEHAVIOUR["broken"].add("case6")
    manifest, _ = run(tmp_path)
    written = [s["subject"] for s in manifest["samples"]]
    assert written == [f"case{i}" for i in range(9) if i != 6]  # in source order, none lost
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 2, 2]
    quarantine = json.loads((tmp_path / "quarantine.json").read_text())
    assert quarantine[0] == bad_file_entry()
    assert quarantine[1]["subject"] == "case6" and "spacing" in quarantine[1]["reason"]
    assert quarantine[1]["position"] == 8  # case0-2, the bad file, case3-5, case6
    assert verify_manifest(tmp_path) == []


# --- blank images ------------------------------------------------------------------------------


@pytest.fixture
def blanks(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(sources.SOURCES, "blanks", blank_cases)
    return "blanks"


def test_a_study_without_an_image_is_quarantined_with_the_reason(tmp_path: Path, blanks: str):
    console = Console(file=io.StringIO(), width=200)
    manifest = convert(blanks, None, tmp_path, preprocess_config=CONFIG, console=console)
    assert sorted(s["subject"] for s in manifest["samples"]) == ["one_blank", "real"]
    quarantine = {
        q["subject"]: q["reason"] for q in json.loads((tmp_path / "quarantine.json").read_text())
    }
    assert quarantine["zeros"] == "blank: constant image: every voxel is 0"
    assert quarantine["hot"].startswith("blank: near-constant image: all but")


def test_a_blank_frame_of_a_real_study_is_kept_listed_and_without_ground_truth(
    tmp_path: Path, blanks: str
):
    convert(blanks, None, tmp_path, preprocess_config=CONFIG, console=Console(file=io.StringIO()))
    stored = {s["meta"]["subject"]: s for s in load_subjects(tmp_path)}
    one_blank, real = stored["one_blank"], stored["real"]
    assert one_blank["meta"]["blank_frames"] == [[1, 0]] and "blank_frames" not in real["meta"]
    assert (one_blank["label"][1, 0] == IGNORE).all()  # not trained on, not scored
    assert (one_blank["label"][1, 1] == LV).any() and (one_blank["label"][0, 0] == LV).any()
    assert ((real["label"] == LV).sum(axis=(2, 3)) > 0).all()  # every frame keeps its truth


def test_a_conversion_into_a_log_prints_progress_lines(
    tmp_path: Path, blanks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output that is not a terminal sees no spinner: a line on the clock and a last one."""
    from cmrfm_io import progress_lines

    ticks = iter(range(0, 10_000, 40))  # each input takes 40 s: a line after every one
    monkeypatch.setattr(progress_lines, "_now", lambda: float(next(ticks)))
    log = io.StringIO()
    convert(blanks, None, tmp_path, preprocess_config=CONFIG, console=Console(file=log, width=200))
    lines = [line for line in log.getvalue().splitlines() if line.startswith("blanks: input")]
    inputs = len(list(blank_cases(None)))
    assert [line.split(" | ")[0] for line in lines] == [
        f"blanks: input {i}" for i in range(1, inputs + 1)
    ]
