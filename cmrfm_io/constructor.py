"""The arguments a class's constructor accepts by name, as LightningCLI sees them: a constructor
that forwards ``**kwargs`` to ``super().__init__(**kwargs)`` accepts its parent's arguments too,
which ``inspect.signature`` does not show."""

from __future__ import annotations

# jsonargparse's resolver is what LightningCLI builds its parsers with (jsonargparse has no public
# name for it); calling it keeps our key checks in agreement with the parser by construction.
from jsonargparse._parameter_resolvers import get_signature_parameters


def constructor_arguments(cls: type) -> list[str]:
    """Names of the arguments ``cls(...)`` takes, in signature order: the constructor's own, then
    those it forwards by ``**kwargs`` to its parent's (recursively, less any it passes itself).

    ``**kwargs`` that go anywhere else are not followed, and add no name: LightningCLI refuses
    unknown keys for such a class too."""
    names = (param.name for param in get_signature_parameters(cls, logger=False))
    return list(dict.fromkeys(names))
