"""Split assignment: a stable hash of the split group, never Python's salted ``hash``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from data_shards.split import DEFAULT_FRACTIONS, assign_split, subject_split

IDS = [f"patient{i:04d}" for i in range(2000)]


def test_deterministic_across_calls() -> None:
    assert [assign_split(i) for i in IDS] == [assign_split(i) for i in IDS]


def test_same_in_another_interpreter_with_another_hash_seed() -> None:
    # Python's hash() changes with PYTHONHASHSEED; the split must not.
    code = "from data_shards.split import assign_split as a; print(','.join(a(f'patient{i:04d}') for i in range(200)))"
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout.strip())
    assert outputs == {",".join(assign_split(i) for i in IDS[:200])}


def test_distribution_matches_fractions() -> None:
    counts = Counter(assign_split(i) for i in IDS)
    assert set(counts) == {name for name, _ in DEFAULT_FRACTIONS}
    for name, fraction in DEFAULT_FRACTIONS:
        assert abs(counts[name] / len(IDS) - fraction) < 0.03, (name, counts)


def test_custom_fractions() -> None:
    counts = Counter(assign_split(i, (("a", 0.5), ("b", 0.5))) for i in IDS)
    assert set(counts) == {"a", "b"}
    assert abs(counts["a"] / len(IDS) - 0.5) < 0.04
    assert {assign_split(i, (("only", 1.0),)) for i in IDS[:50]} == {"only"}


@pytest.mark.parametrize("fractions", [(("a", 0.5), ("b", 0.4)), (("a", 1.2), ("b", -0.2)), ()])
def test_bad_fractions_raise(fractions) -> None:
    with pytest.raises(ValueError, match="fractions"):
        assign_split("x", fractions)


def test_same_group_same_split() -> None:
    # Subjects sharing images share a split_group and must land together, whatever their ids.
    for group in IDS[:100]:
        splits = {subject_split(f"{group}-visit{v}", {"split_group": group}) for v in range(5)}
        assert splits == {assign_split(group)}


def test_group_defaults_to_subject_id_and_explicit_split_wins() -> None:
    assert subject_split("abc", {}) == assign_split("abc")
    assert subject_split("abc", {"split": "test"}) == "test"
