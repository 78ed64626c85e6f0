"""Flags made from a function's (or a dataclass's) signature: one ``--name`` per parameter, typed
by its hint and defaulting to its default, so a default is written once, in the signature."""

from __future__ import annotations

import argparse
import collections.abc
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# What a parameter's entry in `flags` may be: its help, or add_argument's keywords (plus "flag":
# the name on the command line when it is not the parameter's).
Flag = str | Mapping[str, Any]


class LazyFlagsParser(argparse.ArgumentParser):
    """A subcommand's parser whose flags are added when it is first used, to parse or to print
    its help: making them from a signature imports the function's module (torch, for the
    benchmarks), which `cmrfm --help` must not wait for. ``flags`` adds them."""

    def __init__(
        self, *args: Any, flags: Callable[[argparse.ArgumentParser], None] | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self._pending = flags

    def _add_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending(self)

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._add_pending()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._add_pending()
        return super().format_usage()

    def format_help(self) -> str:
        self._add_pending()
        return super().format_help()


def add_signature_flags(
    parser: argparse.ArgumentParser,
    function: Callable[..., Any],
    flags: Mapping[str, Flag] | None = None,
    skip: tuple[str, ...] = ("console",),
) -> None:
    """A flag ``--a-name`` per parameter ``a_name`` of ``function`` (but ``skip``), in signature
    order: its type from the hint (see :func:`hint_keywords`), its default the parameter's and
    its dest the parameter's name, so ``function(**vars(args))`` gets back what it declares.
    ``flags[name]`` is the flag's help, or add_argument keywords that override the derived ones.
    """
    hints = typing.get_type_hints(function)
    for name, param in inspect.signature(function).parameters.items():
        if name in skip:
            continue
        given = flags.get(name, {}) if flags else {}
        extra = {"help": given} if isinstance(given, str) else dict(given)
        own = "--" + name.replace("_", "-")
        flag = extra.pop("flag", own)
        keywords = {"dest": name, "default": param.default, **hint_keywords(hints[name]), **extra}
        takes_text = keywords.get("action") is not argparse.BooleanOptionalAction
        if flag != own and takes_text and "choices" not in keywords:
            keywords.setdefault("metavar", flag[2:].replace("-", "_").upper())  # as argparse's
        parser.add_argument(flag, **keywords)


def call_arguments(function: Callable[..., Any], args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of ``function``'s parameters (those that have a flag)."""
    given = vars(args)
    return {name: given[name] for name in inspect.signature(function).parameters if name in given}


def hint_keywords(hint: Any) -> dict[str, Any]:
    """add_argument keywords for a type hint: ``X | None`` is ``X``; a Literal gives choices, a
    bool ``--x/--no-x``, a sequence of paths a repeatable flag, another sequence a
    comma-separated list of its items; any other type parses the text."""
    kinds = [k for k in _members(hint) if k is not type(None)]
    kind = next((k for k in kinds if _item(k) is not None), kinds[0])  # a list beats `| str`
    item = _item(kind)
    if typing.get_origin(kind) is typing.Literal:
        return {"choices": typing.get_args(kind)}
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if item is Path:
        return {"type": Path, "action": "append"}
    if item is not None:
        return {"type": comma_list(item)}
    return {"type": kind}


def comma_list(kind: type) -> Callable[[str], list[Any]]:
    """A parser of ``a,b,c`` into ``[kind(a), kind(b), kind(c)]``; empty items are skipped."""

    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__} values, got {text!r}"
            )
        return values

    return parse


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _item(kind: Any) -> Any:
    """The item type of a sequence hint (``Sequence[int]``: int), else None."""
    if typing.get_origin(kind) in (collections.abc.Sequence, list, tuple):
        return typing.get_args(kind)[0]
    return None
