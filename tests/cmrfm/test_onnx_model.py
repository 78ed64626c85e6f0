"""ONNX and int8 (cmrfm.onnx_model): an exported segmenter gives torch's logits within 1e-4 for
every segmenter arch and any batch size, `predict --runtime onnx` gives torch's labels, int8
is quantised and mostly agrees, and a package without the file, or with a file that no longer
fits its weights, is refused in one line naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch
from helpers.predict import PACKAGE_PREPROCESS, heart, study_image, write_nifti
from onnx import TensorProto, helper, numpy_helper

from cmrfm.cli import main
from cmrfm.onnx_model import (
    INT8_NAME,
    ONNX_NAME,
    PARITY_ATOL,
    export_onnx,
    load_onnx,
    output_layers,
)
from cmrfm_io.files import sha256_file
from finetune.package import load_finetuned, save_finetuned
from finetune.system import SegFinetuner

SHAPE, SPACING = (4, 5, 60, 64), (8.0, 1.1, 1.25)  # (S, T, H, W), (dz, dy, dx): cropped, wraps
ARCHS = {  # every SegFinetuner arch, at test size
    "unetr": {"backbone": "cmr_vit_test", "patch_size": 8, "tubelet": 2, "feature_size": 8},
    "light": {"backbone": "cmr_vit_test", "patch_size": 8, "tubelet": 2, "feature_size": 8},
    "unet": {},
    "dense": {"backbone": "cmr_unet_small"},
}


def copy_package(source: Path, out: Path) -> Path:
    out.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(source / name, out / name)
    return out


@pytest.fixture(scope="module")
def exported(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conftest's tiny package (cmr_vit_test, 48 x 48, 2 frames) with model.onnx and
    model.int8.onnx."""
    folder = copy_package(package, tmp_path_factory.mktemp("onnx") / "pkg")
    export_onnx(folder, int8=True)
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("study") / "case.nii.gz"
    write_nifti(path, study_image(heart(SHAPE, SPACING)), SPACING)
    return path


def labels_of(study: Path, model: Path, out: Path, *runtime: str) -> np.ndarray:
    main(["predict", str(study), "--model", str(model), "--out", str(out), *runtime])
    return np.asarray(nib.load(out / "case_seg.nii.gz").dataobj)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_onnx_logits_match_torch_for_every_arch(tmp_path, arch):
    torch.manual_seed(0)
    model = SegFinetuner(arch=arch, **ARCHS[arch]).eval()
    folder = save_finetuned(model, tmp_path / arch, preprocess=PACKAGE_PREPROCESS, frames=2)
    records = export_onnx(folder)
    onnx_model, _ = load_onnx(folder)
    clips = torch.rand(3, 1, 2, 48, 48, generator=torch.Generator().manual_seed(1))  # batch 3
    with torch.no_grad():
        expected = model(clips)
    found = onnx_model(clips)
    assert found.shape == expected.shape == (3, 4, 2, 48, 48)
    assert (found - expected).abs().max().item() <= PARITY_ATOL
    assert expected.std().item() > 100 * PARITY_ATOL  # logits that vary: the bound says something
    # config.json records the file and the weights it came from
    record = json.loads((folder / "config.json").read_text())["onnx"][ONNX_NAME]
    assert record == records[ONNX_NAME]
    assert record["sha256"] == sha256_file(folder / ONNX_NAME)
    assert record["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert record["max_abs_logit_diff_vs_torch"] <= PARITY_ATOL
    assert INT8_NAME not in record and not (folder / INT8_NAME).exists()
    load_finetuned(folder)  # the package still loads as before


def test_predict_runtime_onnx_gives_torch_labels(tmp_path, exported, study):
    torch_labels = labels_of(study, exported, tmp_path / "torch")
    onnx_labels = labels_of(study, exported, tmp_path / "onnx", "--runtime", "onnx")
    assert len(np.unique(torch_labels)) > 1  # not a blank answer that any runtime would match
    # fp32 in both: only a voxel whose two best logits tie within ~1e-5 may differ
    assert np.mean(onnx_labels == torch_labels) >= 0.999
    volumes = json.loads((tmp_path / "onnx" / "volumes.json").read_text())
    assert volumes["model"]["runtime"] == "onnx"
    assert json.loads((tmp_path / "torch" / "volumes.json").read_text())["model"]["runtime"] == (
        "torch"
    )


def test_int8_is_quantised_smaller_and_mostly_agrees(tmp_path, exported, study):
    graph = onnx.load(str(exported / INT8_NAME)).graph
    ops = {node.op_type for node in graph.node}
    assert {"MatMulInteger", "ConvInteger"} <= ops  # int8 layers, not a copy of the fp32 graph
    record = json.loads((exported / "config.json").read_text())["onnx"][INT8_NAME]
    assert record["kept_fp32"] == output_layers(onnx.load(str(exported / ONNX_NAME)))
    int8_convs = {n.name for n in graph.node if n.op_type == "ConvInteger"}
    assert not int8_convs & set(record["kept_fp32"])
    int8_weights = [t for t in graph.initializer if t.data_type == TensorProto.INT8]
    assert len(int8_weights) >= len(int8_convs) > 0
    assert (exported / INT8_NAME).stat().st_size < (exported / ONNX_NAME).stat().st_size
    torch_labels = labels_of(study, exported, tmp_path / "torch")
    int8_labels = labels_of(study, exported, tmp_path / "int8", "--runtime", "onnx-int8")
    assert np.mean(int8_labels == torch_labels) >= 0.95


def test_output_layers_are_the_weight_layers_nearest_the_outputs():
    """x -> conv a -> relu -> conv b -> + (relu's output) -> y: both paths back from y stop at
    their first weight layer, b on one and a (through relu) on the other; with no skip, b only."""
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")

    def graph(skip: bool) -> onnx.ModelProto:
        nodes = [
            helper.make_node("Conv", ["x", "w"], ["a"], name="conv_a"),
            helper.make_node("Relu", ["a"], ["r"], name="relu"),
            helper.make_node("Conv", ["r", "w"], ["b"], name="conv_b"),
        ]
        if skip:
            nodes.append(helper.make_node("Add", ["b", "r"], ["y"], name="add"))
        else:
            nodes.append(helper.make_node("Identity", ["b"], ["y"], name="identity"))
        value = [1, 1, 4, 4]
        return helper.make_model(
            helper.make_graph(
                nodes,
                "g",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, value)],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, value)],
                [w],
            )
        )

    assert output_layers(graph(skip=True)) == ["conv_a", "conv_b"]
    assert output_layers(graph(skip=False)) == ["conv_b"]


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_a_package_without_onnx_is_refused_in_one_line(tmp_path, package, study, capsys, runtime):
    folder = copy_package(package, tmp_path / "pkg")
    if runtime == "onnx-int8":
        export_onnx(folder)  # model.onnx only
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(study), "--model", str(folder), "--out", str(tmp_path / "out"),
              "--runtime", runtime])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    name = INT8_NAME if runtime == "onnx-int8" else ONNX_NAME
    flag = "--int8" if runtime == "onnx-int8" else "--onnx"
    assert len(err.splitlines()) == 1
    assert str(folder / name) in err and f"cmrfm export {flag}" in err and "first" in err
    assert not (tmp_path / "out").exists()


def test_onnx_that_no_longer_fits_is_refused(tmp_path, exported):
    folder = tmp_path / "pkg"
    shutil.copytree(exported, folder)
    load_onnx(folder, "onnx-int8")  # fits as written
    with pytest.raises(ValueError, match="2 frames, not 4"):
        load_onnx(folder, frames=4)
    with (folder / ONNX_NAME).open("ab") as f:  # changed after the export
        f.write(b"\0")
    with pytest.raises(ValueError, match=r"model\.onnx: sha256 differs"):
        load_onnx(folder)
    torch.manual_seed(1)  # other weights under the same config
    model, _ = load_finetuned(folder)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    from safetensors.torch import save_model

    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="exported from other weights"):
        load_onnx(folder, "onnx-int8")


def test_export_cli_adds_onnx_to_a_package_and_drops_a_stale_int8(tmp_path, exported, capsys):
    folder = tmp_path / "pkg"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    config["onnx"][INT8_NAME]["weights_sha256"] = "0" * 64  # as if quantised from other weights
    (folder / "config.json").write_text(json.dumps(config))
    main(["export", "--onnx", str(folder)])
    out = capsys.readouterr().out
    assert str(folder / ONNX_NAME) in out and "largest logit difference to torch" in out
    records = json.loads((folder / "config.json").read_text())["onnx"]
    assert list(records) == [ONNX_NAME] and not (folder / INT8_NAME).exists()
    main(["export", "--int8", str(folder)])
    records = json.loads((folder / "config.json").read_text())["onnx"]
    assert set(records) == {ONNX_NAME, INT8_NAME} and (folder / INT8_NAME).is_file()
    with pytest.raises(SystemExit) as exit_info:  # no OUT and no --onnx: nothing to write to
        main(["export", str(folder)])
    assert exit_info.value.code == 2


def test_int8_ops_choose_what_is_quantised(tmp_path, exported, capsys):
    folder = tmp_path / "pkg"
    shutil.copytree(exported, folder)
    main(["export", "--int8", "--int8-ops", "MatMul", str(folder)])
    ops = {node.op_type for node in onnx.load(str(folder / INT8_NAME)).graph.node}
    assert "MatMulInteger" in ops and "ConvInteger" not in ops
    record = json.loads((folder / "config.json").read_text())["onnx"][INT8_NAME]
    assert record["ops"] == ["MatMul"]
    load_onnx(folder, "onnx-int8")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--int8", "--int8-ops", "Gather", str(folder)])
    assert exit_info.value.code == 2
    assert "Gather" in capsys.readouterr().err
