"""The timm zoo (``compiler.zoo.TIMM_ZOO``: random weights, randomised BatchNorm statistics) through
every rewrite and the OpenCL target. The held-out models (``TIMM_HOLDOUT``) are not tested here:
``benchmarks/timm_zoo.py`` reports them beside these."""
import functools

import pytest
import torch
from torch import nn

import compiler
from compiler import zoo
from compiler.graph import is_module

from .conftest import rel_err
from .test_prune_channels import prune_and_oracle

MODELS = sorted(zoo.TIMM_ZOO)
CNNS = sorted(n for n, (_, kind) in zoo.TIMM_ZOO.items() if kind == "cnn")
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = nn.modules.batchnorm._BatchNorm
# At prune_channels 0.3 these keep more than 85% of their parameters, each for the reason given:
# what pruning can reach is a small part of the model.
PRUNE_LITTLE = {
    "mobilevit_xxs": "its MobileViT blocks branch on the input size in Python, so fx keeps them whole "
                     "(reported as kept whole) and the channels through them are blocked",
}


@functools.cache
def _built(name):
    return zoo.build_timm(name)


def build(name):
    model, x = _built(name)
    with torch.no_grad():
        ref = model(x)
    assert ref.abs().max() > 1e-2 and ref.std() > 1e-3, "output near zero: the check would prove nothing"
    return model, x, ref


def bn_after_layers(gm) -> list[str]:
    """BatchNorm nodes whose input is a conv or linear: the ones fold_bn must fold."""
    return [n.name for n in gm.graph.nodes if is_module(gm, n, NORMS) and is_module(gm, n.args[0], LAYERS)]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_default_pipeline_folds_every_bn_after_a_layer_and_exports(name, tmp_path):
    model, x, ref = build(name)
    traced = compiler.trace(model, (x,))
    assert not any(n.op == "call_function" and n.target is torch.nn.functional.batch_norm for n in traced.graph.nodes)
    expected = bn_after_layers(traced)
    cm = compiler.compile(model, x)
    row = cm.report.row("fold_bn")
    assert row.matches == len(expected) and bn_after_layers(cm.graph_module) == []
    with torch.no_grad():
        assert rel_err(ref, cm(x)) <= 1e-4
    res = cm.export_onnx(tmp_path / f"{name}.onnx")
    assert res.max_rel_err <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_prune_channels_shrinks_matches_the_masking_oracle_and_exports(name, tmp_path):
    model, x, _ = build(name)
    traced = compiler.trace(model, (x,))  # prune the traced copy; the oracle runs on the same graph
    gm, report, oracle, out = prune_and_oracle(traced, x, ratio=0.3)
    assert rel_err(oracle, out) < 1e-4
    row = report.row("prune_channels")
    kept = row.params / report.row("trace").params
    if name in PRUNE_LITTLE:
        assert row.modified and kept > 0.85
    else:
        assert kept <= 0.85, [r.reason for r in row.refusals][:5]
    for r in row.refusals:  # every blocker names the node and the op that blocked it
        assert r.node and r.reason
    cm = compiler.compile(gm, x)
    assert cm.export_onnx(tmp_path / "p.onnx").max_rel_err < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_opencl_parity_and_no_torch_fallback_on_cnns(name):
    model, x, ref = build(name)
    cm = compiler.compile(model, x, target="opencl")
    with torch.no_grad():
        assert rel_err(ref, cm(x)) <= 1e-3
    fallbacks = cm.report.backend["fallbacks"]
    if name in CNNS:
        assert fallbacks == []


METHODS = ["svd", "spatial_svd", "tucker2", "cp", "tt"]
# Every method on every model takes 14 minutes here, so the suite gives each model one method in turn -
# every method meets about nine models of several families - and benchmarks/timm_zoo.py --factorize
# runs all of them on all models. CP-ALS on regnetz_005's grouped convs (one ALS per group) alone
# takes 4 minutes, so it gets another method here.
FACTORIZE = [(name, METHODS[(i + (name == "regnetz_005")) % len(METHODS)]) for i, name in enumerate(MODELS)]


@pytest.mark.slow
@pytest.mark.parametrize("name, method", FACTORIZE)
def test_factorize_takes_each_layer_or_names_why_not(name, method):
    model, x, ref = build(name)
    cm = compiler.compile(model, x, pipeline=["cleanup", "fold_bn", {"name": "factorize", "method": method, "rank": 0.25}],
                          verify=False)
    row = cm.report.row("factorize")
    before = compiler.compile(model, x, pipeline=["cleanup", "fold_bn"], verify=False).graph_module
    layers = {n.name: n.target for n in before.graph.nodes if n.op == "call_module"
              and type(before.get_submodule(n.target)) in (nn.Conv2d, nn.Linear)}
    taken = {d["layer"] for d in row.details}
    refused = {r.node for r in row.refusals}
    assert {name for name, path in layers.items() if path not in taken} == refused
    assert all(r.reason for r in row.refusals)
    if taken:
        assert row.params < cm.report.row("fold_bn").params
        with torch.no_grad():
            assert torch.isfinite(cm(x)).all()
