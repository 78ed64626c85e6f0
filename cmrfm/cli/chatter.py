"""Third-party lines that tell a user nothing about their job, kept out of the command line's
output: Lightning's advert for its cloud logger (once per Trainer, so once per few-shot run) and
torch's deprecation of an internal that Lightning still uses (not ours to fix)."""

from __future__ import annotations

import logging
import warnings

ADVERT = "💡 Tip:"
LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(ADVERT)


def quiet_third_party() -> None:
    """Install the filters (idempotent); Lightning's other start-up lines (GPU/TPU) stay."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvert) for f in logger.filters):
            logger.addFilter(_DropAdvert())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
