"""Where the files cmrfm ships beside its code live: the YAML configs and the released hub folders.

Both live at the top of the repository (``configs/``, ``models/``), where users edit and read
them. ``cmrfm/configs`` and ``cmrfm/models`` are symlinks to them, so they are the sub-packages
``cmrfm.configs`` and ``cmrfm.models``: an editable install reads the repository's folders through
the links, and a wheel holds copies (``[tool.setuptools.package-data]`` in pyproject.toml).
Either way ``importlib.resources.files("cmrfm.configs")`` and :data:`CONFIGS` find them. Found
from the bottom layer without importing ``cmrfm``, so that ``foundation`` can look up a release.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent / "cmrfm"  # installed beside cmrfm_io


def shipped_folder(name: str) -> Path:
    """``cmrfm/NAME``: a wheel's copy, or a checkout's symlink resolved to the repository's folder
    (which may not exist yet: ``models/`` before a release). Where git could not make the symlink
    (Windows without symlink support), it wrote a small text file: then the repository's folder."""
    packaged = _PACKAGE / name
    return _PACKAGE.parent / name if packaged.is_file() else packaged.resolve()


CONFIGS = shipped_folder("configs")  # the shipped YAML
MODELS = shipped_folder("models")  # released hub folders (config.json, model.safetensors...)
