"""The arguments a class's constructor accepts by name, as LightningCLI sees them: a constructor
that forwards ``**kwargs`` to ``super().__init__(**kwargs)`` accepts its parent's arguments too,
which ``inspect.signature`` does not show."""

from __future__ import annotations

from jsonargparse import ArgumentParser


def constructor_arguments(cls: type) -> list[str]:
    """Names of the arguments ``cls(...)`` takes, in signature order: the constructor's own, then
    those it forwards by ``**kwargs`` to its parent's (recursively, less any it passes itself).

    Read from the parser jsonargparse builds for ``cls`` (its public API; LightningCLI builds the
    same), so our key checks agree with LightningCLI's. ``**kwargs`` that go anywhere else add no
    name: LightningCLI refuses unknown keys for such a class too."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "init", fail_untyped=False, sub_configs=True)
    dests = (action.dest for action in parser._actions if action.dest.startswith("init."))
    return list(dict.fromkeys(dest.split(".")[1] for dest in dests))
