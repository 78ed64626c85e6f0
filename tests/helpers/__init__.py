"""Helpers shared by test modules in different folders (builders of DICOM, NIfTI and npz inputs,
synthetic hearts, identities to search for). ``tests`` is on sys.path (pyproject's pytest
``pythonpath``), so a test imports them as ``from helpers.dicom import write_stack``."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project
DATA = ROOT.parent / "shared" / "data"  # real data beside the project, see README
