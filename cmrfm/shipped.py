"""The files cmrfm ships beside its code: the YAML configs and the released hub folders.

Both live at the top of the repository (``configs/``, ``models/``), where users edit and read
them. ``cmrfm/configs`` and ``cmrfm/models`` are symlinks to them, so they are the sub-packages
``cmrfm.configs`` and ``cmrfm.models``: an editable install reads the repository's folders through
the links, and a wheel holds copies (``[tool.setuptools.package-data]`` in pyproject.toml).
Either way ``importlib.resources.files("cmrfm.configs")`` and :data:`CONFIGS` find them.
"""

from __future__ import annotations

from pathlib import Path

from foundation.names import CONFIG_NAME

_HERE = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    """``cmrfm/NAME``: a wheel's copy, or a checkout's symlink resolved to the repository's folder
    (which may not exist yet: ``models/`` before a release). Where git could not make the symlink
    (Windows without symlink support), it wrote a small text file: then the repository's folder."""
    packaged = _HERE / name
    return _HERE.parent / name if packaged.is_file() else packaged.resolve()


CONFIGS = _shipped("configs")  # the shipped YAML
MODELS = _shipped("models")  # released hub folders (config.json, model.safetensors, README.md)


def config_path(name: str | Path) -> Path:
    """The config a ``--config`` value names: the file itself when it exists, else the shipped
    config of that name, so that the README's ``--config configs/X.yaml`` works from any
    directory and with a wheel install (``X.yaml``, ``X`` and ``configs/X.yaml`` all name it).

    Raises:
        FileNotFoundError: neither a file nor a shipped config; the message lists the shipped ones.
    """
    path = Path(name)
    if path.is_file():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    if parts:
        for candidate in (CONFIGS.joinpath(*parts), CONFIGS.joinpath(*parts).with_suffix(".yaml")):
            if candidate.is_file():
                return candidate
    shipped = ", ".join(sorted(p.name for p in CONFIGS.glob("*.yaml"))) or "none"
    raise FileNotFoundError(
        f"config {str(name)!r}: no such file, nor a shipped config in {CONFIGS} "
        f"(shipped: {shipped})"
    )


def config_args(argv: list[str]) -> list[str]:
    """argv with the value of every ``--config``/``-c`` (``FLAG VALUE`` or ``FLAG=VALUE``) made a
    path by :func:`config_path`; a flag at the very end is left to the parser to report."""
    out = list(argv)
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if flag not in ("--config", "-c"):
            continue
        if eq:
            out[i] = f"{flag}={config_path(value)}"
        elif i + 1 < len(out):
            out[i + 1] = str(config_path(out[i + 1]))
    return out


def model_path(name: str) -> Path:
    """The released hub folder ``MODELS/NAME``.

    Raises:
        FileNotFoundError: it is not there (not released yet, or an install without it); the
            message names the folder and the way around it.
    """
    path = MODELS / name
    if not (path / CONFIG_NAME).is_file():
        released = sorted(p.parent.name for p in MODELS.glob("*/config.json"))
        raise FileNotFoundError(
            f"no released model {name!r} in {MODELS} (released: {', '.join(released) or 'none'}); "
            "pass --pretrained HUB_FOLDER_OR_CHECKPOINT, or --pretrained none to train from scratch"
        )
    return path
