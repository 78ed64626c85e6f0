"""cmrfm: foundation models for cardiac MRI (command line, demo and report figures)."""

from cmrfm_io.shipped import CONFIGS, MODELS

__all__ = ["CONFIGS", "MODELS", "__version__"]
__version__ = "0.1.0"
