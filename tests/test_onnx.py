import os

import onnx
import pytest
import torch
from torch import nn

import compiler
from compiler.errors import ExportError, InputError, OutputPathError
from runtime.onnx import OrtRunner, export_onnx

from .conftest import rel_err
from .models import Residual, randomize_bn


def compiled(target="torch"):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Residual(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)))
    x = torch.randn(2, 3, 8, 8)
    return model, x, compiler.compile(model, x, target=target)


def test_export_checks_and_reports_parity(tmp_path):
    model, x, cm = compiled()
    res = cm.export_onnx(tmp_path / "m.onnx")
    assert res.opset >= 17 and not res.external_data
    assert res.max_rel_err <= 1e-5
    m = onnx.load(res.path)
    onnx.checker.check_model(m)
    assert {op.version for op in m.opset_import if op.domain in ("", "ai.onnx")} == {17}
    assert [n.op_type for n in m.graph.node].count("Conv") == 3
    assert cm.report.export["path"] == res.path
    assert "onnxruntime parity" in str(cm.report)
    assert os.listdir(tmp_path) == ["m.onnx"]  # no scratch files left behind


def test_dynamic_batch(tmp_path):
    model, x, cm = compiled()
    res = cm.export_onnx(tmp_path / "m.onnx", dynamic_batch=True)
    run = OrtRunner(res.path, model(x))
    x5 = torch.randn(5, 3, 8, 8)
    assert rel_err(model(x5), run(x5)) < 1e-5


def test_external_data(tmp_path):
    model, x, cm = compiled()
    res = cm.export_onnx(tmp_path / "m.onnx", external_data=True)
    assert res.external_data
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx").stat().st_size < (tmp_path / "m.onnx.data").stat().st_size
    assert rel_err(model(x), OrtRunner(res.path, model(x))(x)) < 1e-5


def test_failed_export_leaves_no_partial_file(tmp_path):
    class Unexportable(nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x).real  # no ONNX symbolic

    with pytest.raises(ExportError, match="torch.onnx.export failed"):
        export_onnx(Unexportable(), (torch.randn(3, 3),), tmp_path / "bad.onnx")
    assert os.listdir(tmp_path) == []


def test_unwritable_output_path(tmp_path):
    _, _, cm = compiled()
    with pytest.raises(OutputPathError, match="does not exist"):
        cm.export_onnx(tmp_path / "missing" / "m.onnx")
    with pytest.raises(OutputPathError, match="is a directory"):
        cm.export_onnx(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits; use a read-only path instead
            target = "/proc/m.onnx"
        else:
            target = ro / "m.onnx"
        with pytest.raises(OutputPathError):
            cm.export_onnx(target)
    finally:
        ro.chmod(0o700)


def test_onnx_target_runs_in_onnxruntime():
    model, x, cm = compiled(target="onnx")
    assert cm.target == "onnx" and isinstance(cm._runner, OrtRunner)
    assert rel_err(model(x), cm(x)) < 1e-5
    assert cm.report.export["max_rel_err"] < 1e-5
    with pytest.raises(InputError, match=r"has shape \(1, 3, 8, 8\), the ONNX model expects \(2, 3, 8, 8\)"):
        cm(torch.randn(1, 3, 8, 8))
    with pytest.raises(InputError, match="has dtype torch.float64"):
        cm(x.double())


def test_unknown_target():
    with pytest.raises(InputError, match=r"unknown target 'opencl2', valid targets are \['onnx', 'opencl', 'torch'\]"):
        compiler.compile(nn.ReLU(), torch.randn(2), target="opencl2")
