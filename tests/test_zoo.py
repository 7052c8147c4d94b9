"""Every torchvision classification model in the zoo: trace, default pipeline, ONNX, onnxruntime."""
import pytest
import torch

import compiler
from compiler import zoo
from runtime.onnx import OrtRunner

from .conftest import rel_err


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_default_pipeline_onnx_parity(name, tmp_path):
    model, x = zoo.build(name)
    with torch.no_grad():
        ref = model(x)
    assert ref.abs().max() > 1e-2 and ref.std() > 1e-3, "output near zero: the check would prove nothing"

    cm = compiler.compile(model, x)
    with torch.no_grad():
        out = cm(x)
    assert rel_err(ref, out) <= 1e-4
    assert cm.report.row("fuse").max_rel_err <= 1e-4

    result = cm.export_onnx(tmp_path / f"{name}.onnx")
    assert result.opset >= 17
    assert result.max_rel_err <= 1e-4
    ort_out = OrtRunner(result.path, ref)(x)
    assert rel_err(ref, ort_out) <= 1e-4
