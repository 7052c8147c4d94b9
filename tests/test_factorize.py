import math

import onnx
import pytest
import torch
from torch import nn

import compiler
from compiler.errors import FactorizationError, PassError, PipelineError, RankError
from compiler.ops import TTLinear

from .conftest import rel_err


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding="same", dilation=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise
            nn.Conv2d(32, 64, 3, padding=1, groups=4),  # grouped
            nn.Conv2d(64, 64, 1),
        )
        self.fc1 = nn.Linear(64, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(self.body(self.stem(x)).mean((2, 3)))))


def factorize(model, x, **kw):
    gm = compiler.trace(model, x)
    return compiler.PassManager([{"name": "factorize", **kw}]).run(gm, (x,))


def reasons(row):
    return {r.node: r.reason for r in row.refusals}


@pytest.mark.parametrize(
    "method, layers, chain_types",
    [
        ("svd", ["body.0", "body.2", "body.5", "body.6", "fc1"], [nn.Conv2d, nn.Conv2d]),
        ("spatial_svd", ["body.0", "body.2", "body.5"], [nn.Conv2d, nn.Conv2d]),
        ("tucker2", ["body.0", "body.2", "body.5"], [nn.Conv2d, nn.Conv2d, nn.Conv2d]),
        ("cp", ["body.0", "body.2", "body.5"], [nn.Conv2d] * 4),
        ("tt", ["body.0", "body.2", "body.5", "fc1"], [nn.Conv2d] * 4),
    ],
)
def test_methods_rewrite_the_eligible_layers(method, layers, chain_types):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    gm, report = factorize(model, x, method=method, rank=0.25)
    row = report.row("factorize")
    assert row.matches == len(layers)
    assert [d["layer"] for d in row.details] == layers
    chain = gm.get_submodule("body.0")
    assert [type(m) for m in chain] == chain_types
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert "body.0" not in called and f"body.0.{len(chain_types) - 1}" in called
    assert chain[-1].bias is not None
    why = reasons(row)
    assert why["stem"].startswith("skipped: first layer") and why["head"].startswith("skipped: last layer")
    assert "depthwise" in why["body_4"] and "body_5" not in why  # the grouped conv is factorized per group
    grouped = gm.get_submodule("body.5")
    assert all(c.groups % 4 == 0 for c in grouped) and sum(c.groups == 4 for c in grouped) >= 2
    if method != "svd":
        assert "1x1 conv" in why["body_6"]
    for d in row.details:
        assert d["params_after"] < d["params_before"]
        if not (method == "tt" and d["layer"] == "fc1"):  # a TT-matrix on a small Linear saves params, not MACs
            assert d["macs_after"] < d["macs_before"]
        assert 0 < d["weight_rel_err"] < 1 and d["output_rel_err"] > 0
    assert row.params < report.row("trace").params
    with torch.no_grad():
        out = gm(x)
    assert out.shape == (2, 10) and rel_err(model(x), out) == pytest.approx(row.max_rel_err, rel=1e-3)


def test_tt_linear_is_reshape_and_matmul_and_exports(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10)).eval()
    x = torch.randn(4, 32)
    cm = compiler.compile(model, x, pipeline=[{"name": "factorize", "method": "tt", "rank": 8}])
    tt = cm.graph_module.get_submodule("2.0")
    assert isinstance(tt, TTLinear) and tt.in_modes == (8, 8, 4) and tt.out_modes == (8, 8, 8)
    res = cm.export_onnx(tmp_path / "tt.onnx")
    ops = {n.op_type for n in onnx.load(res.path).graph.node}
    assert "MatMul" in ops and "Reshape" in ops and "Einsum" not in ops
    assert res.max_rel_err < 1e-5


def test_overrides_and_unmatched_glob_warning():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 3, 16, 16)
    gm, report = factorize(model, x, method="svd", rank=0.25, overrides={"body.2": 4, "fc*": "skip", "nothing.*": 0.5})
    row = report.row("factorize")
    ranks = {d["layer"]: d["rank"] for d in row.details}
    assert ranks["body.2"] == [4] and "fc1" not in ranks
    assert reasons(row)["fc1"] == "skipped by override 'fc*'"
    assert report.warnings == ["factorize: override glob 'nothing.*' matches no layer"]


def test_refuses_rank_that_does_not_reduce_parameters():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)).eval()
    x = torch.randn(2, 8)
    gm, report = factorize(model, x, method="svd", rank=1.0)
    row = report.row("factorize")
    assert row.matches == 0 and not row.modified
    assert "keeps 136 params, not fewer than 72" in reasons(row)["_1"]


def test_min_params_and_skip_flags():
    model = Net().eval()
    x = torch.randn(1, 3, 16, 16)
    _, report = factorize(model, x, method="svd", rank=0.25, min_params=5_000, skip_first=False)
    row = report.row("factorize")
    assert [d["layer"] for d in row.details] == ["body.2", "fc1"]
    assert "448 params < min_params=5,000" in reasons(row)["stem"]


def test_toml_pipeline_and_onnx(tmp_path):
    torch.manual_seed(0)
    p = tmp_path / "p.toml"
    p.write_text('[[pass]]\nname = "fold_bn"\n\n[[pass]]\nname = "factorize"\nmethod = "tucker2"\nrank = 0.25\n\n[[pass]]\nname = "fuse"\n')
    model = Net().eval()
    x = torch.randn(1, 3, 16, 16)
    cm = compiler.compile(model, x, pipeline=p)
    assert cm.report.row("factorize").matches == 3  # body.0, body.2 and the grouped body.5
    assert "factorize: per layer" in str(cm.report)
    res = cm.export_onnx(tmp_path / "m.onnx")
    assert res.max_rel_err < 1e-4


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rank": 0}, RankError, "rank must be >= 1"),
        ({"rank": 1.5}, RankError, r"in \(0, 1\]"),
        ({"rank": "energy:1.5"}, RankError, r"energy must be in \(0, 1\]"),
        ({"method": "qr"}, PipelineError, r"unknown factorization method 'qr', valid methods are \['cp', 'spatial_svd', 'svd', 'tt', 'tucker2'\]"),
        ({"overrides": {"fc*": 0}}, RankError, r"overrides\['fc\*'\]: rank must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        compiler.PassManager([{"name": "factorize", **kwargs}])


def test_rank_above_full_rank_names_the_layer():
    model = Net().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(PassError) as info:
        factorize(model, x, method="svd", rank=500)
    cause = info.value.__cause__
    assert isinstance(cause, RankError)
    assert "layer 'body.0' (Conv2d 16->32 k=(3, 3)), rank 500: rank 500 is above full rank 32" in str(cause)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_weights(bad):
    model = Net().eval()
    with torch.no_grad():
        model.body[2].weight[0, 0, 0, 0] = bad
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(PassError) as info:
        factorize(model, x, method="svd", rank=0.25)
    assert isinstance(info.value.__cause__, FactorizationError)
    assert "layer 'body.2' has NaN or inf weights" in str(info.value)


def test_lossy_tolerance_is_enforced():
    model = Net().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(compiler.VerificationError, match="pass 'factorize'"):
        factorize(model, x, method="svd", rank=1, tolerance=0.01)


@pytest.mark.parametrize("method", ["svd", "tucker2", "spatial_svd", "cp", "tt"])
def test_grouped_conv_factorizes_per_group(method, tmp_path):
    """Each group's kernel is factorized alone: at full rank SVD / Tucker-2 / spatial SVD and their
    grouped chains are exact; the pass keeps the groups in every factor (CP's depthwise factors one
    group per rank), saves parameters, and the result exports."""
    from passes.decompose import METHODS, grouped, parse_rank, resolve_ranks
    from passes.factor_layers import build_chain

    torch.manual_seed(0)
    conv = nn.Conv2d(32, 64, 3, padding=1, stride=2, groups=4)
    x = torch.randn(2, 32, 12, 12)
    m = grouped(METHODS[(method, "conv")], 4)
    w = conv.weight.detach()
    if method in ("svd", "tucker2", "spatial_svd"):
        full = resolve_ranks(parse_rank(1.0), m, w)
        factors = m.decompose(w, full)
        assert rel_err(w, m.reconstruct(factors)) <= 1e-4
        with torch.no_grad():
            y = x
            for layer in build_chain(method, conv, factors):
                y = layer(y)
            assert rel_err(conv(x), y) <= 1e-4

    model = nn.Sequential(nn.Conv2d(3, 32, 1), conv, nn.ReLU(), nn.Conv2d(64, 8, 1)).eval()
    x = torch.randn(2, 3, 12, 12)
    gm, report = factorize(model, x, method=method, rank=0.5)
    row = report.row("factorize")
    assert [d["layer"] for d in row.details] == ["1"]
    chain = list(gm.get_submodule("1"))
    assert chain[0].in_channels == 32 and chain[-1].out_channels == 64 and chain[-1].bias is not None
    if method == "cp":
        r = chain[0].out_channels
        assert [c.groups for c in chain] == [4, r, r, 4] and r % 4 == 0
    else:
        assert all(c.groups == 4 for c in chain)
    d = row.details[0]
    assert d["params_after"] == sum(p.numel() for c in chain for p in c.parameters()) < d["params_before"]
    with torch.no_grad():
        assert rel_err(model(x), gm(x)) == pytest.approx(row.max_rel_err, rel=1e-3)
    cm = compiler.compile(model, x, pipeline=[{"name": "factorize", "method": method, "rank": 0.5}], verify=False)
    assert cm.export_onnx(tmp_path / "g.onnx").max_rel_err <= 1e-4


def test_grouped_energy_rank_reads_the_layer_spectrum():
    from passes.decompose import METHODS, grouped, parse_rank, resolve_ranks

    torch.manual_seed(0)
    w = torch.randn(64, 8, 3, 3)
    w[:16] *= 1e-3  # one quiet group: its energy is negligible in the layer's
    m = grouped(METHODS[("svd", "conv")], 4)
    (r,) = resolve_ranks(parse_rank("energy:0.9"), m, w)
    (r_loud,) = resolve_ranks(parse_rank("energy:0.9"), METHODS[("svd", "conv")], w[16:32])
    assert 1 <= r < r_loud  # three loud groups share the count: fewer per group than a loud group alone
