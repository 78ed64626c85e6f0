"""cmrfm.study: a study as `cmrfm predict` reads it, a NIfTI file or one DICOM study's folder."""

from __future__ import annotations

import pytest
from helpers.dicom import write_stack

from cmrfm.study import read_study as predict_read_study


def test_predict_refuses_a_folder_of_two_studies(tmp_path):
    write_stack(tmp_path / "both" / "a", PatientID="one")
    write_stack(tmp_path / "both" / "b", PatientID="two")
    with pytest.raises(ValueError, match="2 sub-folders do not make one study"):
        predict_read_study(tmp_path / "both")
