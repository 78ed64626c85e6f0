"""The config a ``--config`` names: a file, or a shipped config by name from any folder (the
shipped folders: :mod:`cmrfm_io.shipped`)."""

from __future__ import annotations

from pathlib import Path

from cmrfm_io.shipped import CONFIGS


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
