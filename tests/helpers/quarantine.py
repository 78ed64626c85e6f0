"""The inputs a conversion quarantined, found back on disk by their keyed ids."""

from __future__ import annotations

import json
from pathlib import Path

from data_shards.convert import QUARANTINE
from data_shards.privacy import default_salt, local_inputs


def quarantined_inputs(out: Path, root: Path) -> list[Path]:
    """The local paths of the inputs ``out/quarantine.json`` names (by keyed id), in its order."""
    entries = [e for e in json.loads((out / QUARANTINE).read_text()) if "input" in e]
    found = local_inputs(root, {e["input"] for e in entries}, default_salt())
    return [found[e["input"]] for e in entries]
