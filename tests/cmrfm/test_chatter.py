"""cmrfm.cli.chatter: the command line drops Lightning's cloud-logger advert and torch's LeafSpec
deprecation, and keeps Lightning's other lines and every other warning."""

from __future__ import annotations

import logging
import warnings

import pytest
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from cmrfm.cli.chatter import LIGHTNING_LOGGERS, quiet_third_party


def test_the_advert_goes_and_the_device_line_stays(caplog: pytest.LogCaptureFixture) -> None:
    quiet_third_party()
    quiet_third_party()  # a second call adds no second filter
    logger = logging.getLogger(LIGHTNING_LOGGERS[0])
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=LIGHTNING_LOGGERS[0]):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_only_the_leafspec_deprecation_is_silenced() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1
        )
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
