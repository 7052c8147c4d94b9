"""Every factorization method on the zoo models the issue names: factorize, export, onnxruntime parity."""
import pytest
import torch

import compiler
from compiler import zoo

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "vgg16", "efficientnet_b0", "convnext_tiny", "vit_b_16"]
METHODS = ["svd", "spatial_svd", "tucker2", "cp", "tt"]
# Models with no layer a method applies to: only 1x1 / depthwise convs (mobilenet_v2, efficientnet_b0)
# or only Linear layers (vit_b_16) besides the skipped first and last layer.
NOTHING_TO_DO = {(m, k) for m in ("mobilenet_v2", "efficientnet_b0", "vit_b_16") for k in ("spatial_svd", "tucker2", "cp")} | {
    ("mobilenet_v2", "tt"), ("efficientnet_b0", "tt")}
# VGG-16 (138M params) takes 33 to 59 s a method: it keeps the methods its big Linears and plain 3x3
# convs are there for (SVD, Tucker-2); spatial SVD, CP and TT on 3x3 convs meet ResNet and ConvNeXt.
CASES = [(m, k) for m in MODELS for k in METHODS if not (m == "vgg16" and k in ("spatial_svd", "cp", "tt"))]


@pytest.mark.slow
@pytest.mark.parametrize("name, method", CASES)
def test_factorized_zoo_exports_with_parity(name, method, tmp_path):
    model, x = zoo.build(name)
    cm = compiler.compile(model, x, pipeline=["cleanup", "fold_bn", {"name": "factorize", "method": method, "rank": 0.1}, "fuse"])
    row = cm.report.row("factorize")
    if (name, method) in NOTHING_TO_DO:
        assert row.matches == 0 and row.refusals
        assert all(("1x1" in r.reason or "depthwise" in r.reason or "no Linear form" in r.reason or "skipped" in r.reason)
                   for r in row.refusals)
        return
    assert row.matches > 0
    assert row.params < cm.report.row("fold_bn").params
    res = cm.export_onnx(tmp_path / "m.onnx")
    assert res.max_rel_err <= 1e-4  # onnxruntime vs the factorized torch graph
    with torch.no_grad():
        assert torch.allclose(cm(x), cm.graph_module(x))


@pytest.mark.slow
def test_tucker2_quarter_rank_halves_resnet50_factorized_params():
    model, x = zoo.build("resnet50")
    cm = compiler.compile(model, x, pipeline=["fold_bn", {"name": "factorize", "method": "tucker2", "rank": 0.25}])
    details = cm.report.row("factorize").details
    before = sum(d["params_before"] for d in details)
    after = sum(d["params_after"] for d in details)
    assert len(details) == 16 and before / after >= 2.0
    measured = sum(p.numel() for d in details for p in cm.graph_module.get_submodule(d["layer"]).parameters())
    assert measured == after  # the report counts what is really there
