"""A constructor's arguments, following **kwargs forwarded to the parent's constructor as
LightningCLI does; the key checks of configs and saved model folders read them from here."""

from __future__ import annotations

from typing import Any

import pytest

from cmrfm_io.constructor import constructor_arguments


class Base:
    def __init__(self, shards: str, seed: int = 0, batch_size: int = 8) -> None:
        self.shards, self.seed, self.batch_size = shards, seed, batch_size


class Forwards(Base):
    def __init__(self, max_slices: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)


class ForwardsAndSets(Base):
    def __init__(self, max_slices: int = 16, **kwargs: Any) -> None:
        super().__init__(batch_size=4, **kwargs)


class Twice(Forwards):
    def __init__(self, lr: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)


class Keeps:
    def __init__(self, name: str = "x", **kwargs: Any) -> None:
        self.extra = kwargs


@pytest.mark.parametrize(
    ("cls", "names"),
    [(Base, ["shards", "seed", "batch_size"]),
     (Forwards, ["max_slices", "shards", "seed", "batch_size"]),
     (ForwardsAndSets, ["max_slices", "shards", "seed"]),  # batch_size is its own to give
     (Twice, ["lr", "max_slices", "shards", "seed", "batch_size"]),
     (Keeps, ["name"])],  # kwargs kept, not forwarded: nothing to name
)  # fmt: skip
def test_forwarded_kwargs_bring_the_parents_arguments(cls: type, names: list[str]) -> None:
    assert constructor_arguments(cls) == names


@pytest.mark.parametrize(
    "class_path",
    ["finetune.data.FewShotSegData", "finetune.data.FewShotSubjectData",
     "finetune.system.SegFinetuner", "finetune.system.SubjectFinetuner",
     "pretext.combined.MAEContrastive", "lightning.Trainer"],
)  # fmt: skip
def test_the_names_are_those_lightningcli_parses(class_path: str) -> None:
    import importlib

    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "c", fail_untyped=False)
    assert set(constructor_arguments(cls)) == set(vars(parser.get_defaults().c))
