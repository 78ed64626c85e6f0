"""cmrfm: foundation models for cardiac MRI (command line, demo and report figures)."""

__version__ = "0.1.0"
