"""cmrfm: foundation models for cardiac MRI (command line, demo and report figures)."""

from pathlib import Path

__version__ = "0.1.0"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # the shipped YAML
