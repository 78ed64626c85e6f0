"""The keys of a training config, checked before LightningCLI parses it: a typo in the YAML or on
the command line is named in one line with the nearest accepted key (difflib), where
jsonargparse would print 50 lines of usage."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from cmrfm_io.constructor import constructor_arguments

# LightningCLI's top level (run=False); the command line also takes these three.
SECTIONS = ("seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler")
COMMAND_LINE_ONLY = ("config", "print_config", "help")
# Sections given as a class: `class_path` + `init_args` (`--model.lr` is `--model.init_args.lr`).
SUBCLASS_SECTIONS = ("model", "data")
CLASS_KEYS = ("class_path", "init_args", "dict_kwargs", "help")


class ConfigError(ValueError):
    """A config key that is not accepted; the message names the file or flag, the key and the
    nearest accepted key."""


def check_config_keys(path: Path) -> None:
    """Every top-level key of the YAML must be a LightningCLI section, every ``trainer`` key an
    argument of the Trainer, and every ``init_args`` key of ``model`` and ``data`` an argument
    of its ``class_path``; the first that is not raises ConfigError naming it and the nearest
    accepted key. A class's arguments include those its ``**kwargs`` forward to its parent's
    constructor (:func:`~cmrfm_io.constructor.constructor_arguments`), as LightningCLI's."""
    config = _read(path)
    classes: dict[str, type | None] = {"trainer": L.Trainer}
    for section, class_path in _class_paths(config).items():
        classes[section] = _import(class_path)
        if classes[section] is None:
            raise ConfigError(f"{path}: {section}.class_path {class_path!r} cannot be imported")
    for key in _yaml_keys(config):
        problem = unknown_key(key, classes, SECTIONS)
        if problem is not None:
            raise ConfigError(f"{path}: {problem}")


def check_argv_keys(argv: Sequence[str], configs: Sequence[Path] = ()) -> None:
    """The same check for the command line's ``--SECTION.KEY`` flags (after the shortcuts are
    expanded), against the classes the last of ``configs`` or the command line itself names;
    raises ConfigError naming the flag. A class that cannot be imported by its full path (a
    short name jsonargparse resolves) is left to LightningCLI."""
    keys = list(_argv_keys(argv))
    paths = {}
    for config in configs:
        paths.update(_class_paths(_read(config)))
    for key, value in keys:  # `--model CLASS` or `--model.class_path CLASS`
        if key[0] in SUBCLASS_SECTIONS and key[1:] in ((), ("class_path",)) and value:
            paths[key[0]] = value
    classes = {"trainer": L.Trainer, **{s: _import(c) for s, c in paths.items()}}
    for key, _ in keys:
        problem = unknown_key(key, classes, SECTIONS + COMMAND_LINE_ONLY)
        if problem is not None:
            raise ConfigError(f"--{problem}")


def unknown_key(
    key: Sequence[str], classes: Mapping[str, type | None], sections: Sequence[str]
) -> str | None:
    """``None`` when the dotted ``key`` (``("model", "init_args", "lr")``) is accepted, else the
    key up to its wrong part and what is wrong with it, with the nearest accepted name. Only the
    first argument below a class is checked (``trainer.logger``, not ``trainer.logger.*``)."""
    if key[0] not in sections:
        return f"{key[0]} is not a top-level config key{_hint(key[0], sections)}"
    cls = classes.get(key[0])
    if cls is None or len(key) < 2:
        return None
    at = 1
    if key[0] in SUBCLASS_SECTIONS and key[1] in CLASS_KEYS:
        if key[1] != "init_args" or len(key) < 3:
            return None
        at = 2
    names = constructor_arguments(cls)
    if key[at] in names:
        return None
    where, owner = ".".join(key[: at + 1]), f"{cls.__module__}.{cls.__qualname__}"
    return f"{where} is not an argument of {owner}{_hint(key[at], names)}"


def _hint(key: str, names: Sequence[str]) -> str:
    near = difflib.get_close_matches(key, names, n=1)
    return f"; did you mean {near[0]!r}?" if near else f"; it takes {', '.join(names)}"


def _read(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the config ({err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config is a mapping (trainer:, model:, data:)")
    return config


def _class_paths(config: Mapping[str, Any]) -> dict[str, str]:
    """The ``class_path`` of each subclass section that names one."""
    paths = {}
    for section in SUBCLASS_SECTIONS:
        value = config.get(section)
        if isinstance(value, dict) and isinstance(value.get("class_path"), str):
            paths[section] = value["class_path"]
    return paths


def _yaml_keys(config: Mapping[str, Any]) -> Iterator[tuple[str, ...]]:
    """Every key of a config as a tuple, down to ``section.init_args.argument``."""
    for section, value in config.items():
        yield (str(section),)
        if isinstance(value, dict):
            for key, inner in value.items():
                yield (str(section), str(key))
                if key == "init_args" and isinstance(inner, dict):
                    yield from ((str(section), str(key), str(arg)) for arg in inner)


def _argv_keys(argv: Sequence[str]) -> Iterator[tuple[tuple[str, ...], str | None]]:
    """``(key, value)`` of every ``--a.b.c VALUE`` / ``--a.b.c=VALUE`` / ``--a.b+=VALUE``."""
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or arg == "--":
            continue
        name, eq, value = arg[2:].partition("=")
        given = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
        yield tuple(name.removesuffix("+").split(".")), given


def _import(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
