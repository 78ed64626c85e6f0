"""Weights named as a user names them: a path, a released model's name, or "none".

``create_backbone(arch, pretrained="cmr-unet-small-cine")`` takes a released hub folder by name, as
timm's ``create_model`` takes a pretrained tag. Released folders ship as data beside the code
(``models/`` in a checkout, ``cmrfm/models`` in a wheel: :mod:`cmrfm_io.shipped` knows where).
"""

from __future__ import annotations

import re
from pathlib import Path

from cmrfm_io import shipped
from foundation.names import CONFIG_NAME

NO_WEIGHTS = "none"  # `--pretrained none`: a random start, whatever the config's default
DEFAULT_RELEASE = "cmr-unet-small-cine"  # cmrfm's own cine backbone (issue 12's release)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def is_release_name(text: str) -> bool:
    """A bare name (no folder part, no file suffix) that is not a path here."""
    return bool(_NAME.fullmatch(text)) and Path(text).suffix == "" and not Path(text).exists()


def resolve_pretrained(pretrained: str | Path | None) -> Path | None:
    """The file or folder ``pretrained`` names: None for None, "" or "none"; a released model's
    folder for its name; else the path as given (checked by whoever reads it).

    Raises:
        FileNotFoundError: a bare name that no released model has; the message lists them.
    """
    if pretrained is None or str(pretrained) in ("", NO_WEIGHTS):
        return None
    if isinstance(pretrained, str) and is_release_name(pretrained):
        return model_path(pretrained)
    return Path(pretrained)


def model_path(name: str) -> Path:
    """The released hub folder ``MODELS/NAME``.

    Raises:
        FileNotFoundError: it is not there (not released yet, or an install without it); the
            message names the folder and the way around it.
    """
    models = shipped.MODELS
    path = models / name
    if not (path / CONFIG_NAME).is_file():
        released = sorted(p.parent.name for p in models.glob(f"*/{CONFIG_NAME}"))
        raise FileNotFoundError(
            f"no released model {name!r} in {models} (released: {', '.join(released) or 'none'}); "
            "pass --pretrained HUB_FOLDER_OR_CHECKPOINT, or --pretrained none to train from scratch"
        )
    return path
