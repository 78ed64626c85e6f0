"""Pseudonymous subject ids: a keyed hash (HMAC-SHA256) of a patient identifier and a local salt.

The salt lives in ``$CMRFM_CACHE/id_salt`` (default ``~/.cache/cmrfm/id_salt``), created once per
machine, so ids and therefore splits are stable across runs. It must never be written to outputs:
with it, short identifiers such as a hospital's patient ids could be recovered by trying them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

CACHE_ENV = "CMRFM_CACHE"
SALT_FILE = "id_salt"
HEX_DIGITS = 12  # 48 bits: collisions stay negligible (~1e-6) for a cohort of 20,000 ids


def anonymous_id(raw: str, salt: str, prefix: str) -> str:
    """``"<prefix>-<12 hex>"``: the same (raw, salt) always gives the same id, another salt another."""
    if not salt:
        raise ValueError("salt must be a non-empty string; use default_salt() for the machine's")
    digest = hmac.new(salt.encode("utf-8"), raw.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:HEX_DIGITS]}"


def salt_path() -> Path:
    """Where the machine's salt lives: ``$CMRFM_CACHE/id_salt`` or ``~/.cache/cmrfm/id_salt``."""
    cache = os.environ.get(CACHE_ENV)
    base = Path(cache).expanduser() if cache else Path.home() / ".cache" / "cmrfm"
    return base / SALT_FILE


def default_salt() -> str:
    """The machine's salt, read from :func:`salt_path` or created there (readable by owner only)."""
    path = salt_path()
    if not path.exists():
        _create_salt(path)
    salt = path.read_text().strip()
    if not salt:
        raise ValueError(
            f"{path}: salt file is empty; delete it to make a new one (subject ids, and so "
            "splits, of data converted with the old salt will change)"
        )
    return salt


def _create_salt(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    try:
        # link() fails if the name exists, so two processes starting at once agree on one salt.
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: a plain rename, last writer wins
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


INPUT_PREFIX = "input"
_NAME_EDGE = r"(?<![A-Za-z0-9]){}(?![A-Za-z0-9])"


def input_ref(path: Path | str, root: Path | str | None, salt: str) -> str:
    """``"input-<12 hex>"``: a keyed id of an input file or folder, for written files.

    Folder and file names are often PatientIDs, so outputs name an input by this id (of its path
    relative to ``root``, so moving the dataset keeps it) and never by its path.
    """
    return anonymous_id(_relative(path, root).as_posix(), salt, INPUT_PREFIX)


def scrub(text: str, path: Path | str, root: Path | str | None, ref: str) -> str:
    """``text`` with the input's path, and every name along it below ``root`` or beside it in its
    folder, replaced by ``ref``: a reason written to a file must not spell a local name."""
    path, mark = Path(path), "\x00"  # a mark no name can match, replaced by ref at the end
    relative = _relative(path, root)
    forms = {str(path), str(path.resolve()), relative.as_posix()}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, mark) if len(form) > 1 else text
    names = set(relative.parts)
    folder = path if path.is_dir() else path.parent
    if folder.is_dir() and (root is None or folder.resolve() != Path(root).resolve()):
        with contextlib.suppress(OSError):  # unreadable: its own name is scrubbed all the same
            names |= {child.name for child in folder.iterdir()}
    for name in sorted(names, key=len, reverse=True):  # longest first: no half-replaced names
        if len(name) >= 3:
            text = re.sub(_NAME_EDGE.format(re.escape(name)), mark, text)
    return text.replace(mark, ref)


def local_inputs(root: Path | str, refs: set[str], salt: str) -> dict[str, Path]:
    """The local path of each keyed input id found under ``root`` (for the operator's terminal
    only): every file and folder below it is hashed until all are found."""
    found: dict[str, Path] = {}
    root = Path(root)
    if not refs or not root.is_dir():
        return found
    for path in sorted(root.rglob("*")):
        ref = input_ref(path, root, salt)
        if ref in refs:
            found[ref] = path
            if len(found) == len(refs):
                break
    return found


def _relative(path: Path | str, root: Path | str | None) -> Path:
    """``path`` below ``root`` (resolved), or resolved as it is when outside it or without root."""
    path = Path(path).resolve()
    if root is not None:
        try:
            return path.relative_to(Path(root).resolve())
        except ValueError:
            pass
    return path
