"""Shared test settings."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
