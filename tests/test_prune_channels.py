"""Structured pruning, checked by the masking oracle: zeroing the pruned channels in the original
graph must give what the physically shrunk graph gives."""
import pytest
import torch
from torch import nn

import compiler
from compiler import zoo
from compiler.errors import PipelineError
from passes.prune_channels import PruneChannels
from passes.pruning.depgraph import analyse
from passes.pruning.shrink import masked_forward

from .conftest import rel_err
from .models import randomize_bn


def prune_and_oracle(model, x, **kw):
    """(pruned graph module, report, oracle output, pruned output)."""
    gm = compiler.trace(model, x)
    p = PruneChannels(**kw)
    cg = analyse(gm)
    removed = {e for u in p.plan(gm, cg)["removed_units"] for e in u}
    oracle = masked_forward(gm, cg, removed, x)
    pruned, report = compiler.PassManager([p]).run(compiler.trace(model, x), (x,))
    with torch.no_grad():
        return pruned, report, oracle, pruned(x)


class Mixed(nn.Module):
    """Residual add, concat with offsets, depthwise conv, SE gate, flatten into a Linear."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.c = nn.Conv2d(16, 8, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(24, 6, 1), nn.ReLU(), nn.Conv2d(6, 24, 1), nn.Sigmoid())
        self.head = nn.Linear(24 * 4 * 4, 5)

    def forward(self, x):
        y = self.a(x)
        y = torch.relu(self.b(y) + y)
        z = torch.cat([y, self.c(y)], dim=1)
        z = self.dw(z)
        z = z * self.se(z)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(z, 4), 1))


def test_mixed_net_matches_masking_oracle_and_shrinks():
    torch.manual_seed(0)
    model = randomize_bn(Mixed())
    x = torch.randn(2, 3, 8, 8)
    gm, report, oracle, out = prune_and_oracle(model, x, ratio=0.5)
    assert rel_err(oracle, out) < 1e-4
    # the SE gate couples the concat [y, c(y)] with se.3, so a.0, b.0, c and se.3 form one group of 24
    groups = sorted(report.row("prune_channels").details, key=lambda g: g["channels_before"])
    assert groups[1]["layers"] == ["a.0", "b.0", "c", "se.3"]
    for g in groups:
        assert g["params_after"] < g["params_before"] and g["macs_after"] < g["macs_before"]
    g = groups[0]  # se.1: Conv2d(24 -> 6, 1x1) with bias; loses 3 outputs and (as a consumer) 12 inputs
    assert (g["params_before"], g["params_after"]) == (24 * 6 + 6, 12 * 3 + 3)
    assert [(g["channels_before"], g["channels_after"]) for g in groups] == [(6, 3), (24, 12)]
    a, c = gm.get_submodule("a.0").out_channels, gm.get_submodule("c").out_channels
    assert a + c == 12 and a >= 1 and c >= 1  # no layer is ever emptied
    assert gm.get_submodule("b.0").out_channels == gm.get_submodule("b.1").num_features == a  # residual coupling
    dw = gm.get_submodule("dw")
    assert dw.in_channels == dw.out_channels == dw.groups == a + c  # concat offsets kept
    assert gm.get_submodule("se.3").out_channels == a + c
    assert gm.get_submodule("head").in_features == (a + c) * 16  # each channel's 4x4 block went with it
    blocked = {r.node: r.reason for r in report.row("prune_channels").refusals}
    assert blocked == {"head": "reaches the model output"}


def test_ratio_zero_is_identity():
    model = randomize_bn(Mixed())
    x = torch.randn(1, 3, 8, 8)
    gm, report = compiler.PassManager([PruneChannels(ratio=0.0)]).run(compiler.trace(model, x), (x,))
    assert not report.row("prune_channels").modified
    assert report.row("prune_channels").params == report.row("trace").params
    assert rel_err(model(x), gm(x)) == 0


def test_round_to_keeps_multiples():
    model = randomize_bn(Mixed())
    x = torch.randn(1, 3, 8, 8)
    gm, _, oracle, out = prune_and_oracle(model, x, ratio=0.3, round_to=8)
    assert gm.get_submodule("a.0").out_channels % 8 == 0
    assert rel_err(oracle, out) < 1e-4


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.0}, r"ratio must be in \[0, 1\)"), ({"ratio": -0.1}, r"ratio must be in \[0, 1\)"),
    ({"importance": "hessian"}, r"unknown importance 'hessian', valid choices are \['bn_scale', 'l1', 'l2', 'random', 'taylor'\]"),
    ({"round_to": 0}, "round_to must be an int >= 1"),
    ({"max_ratio": 0}, r"max_ratio must be in \(0, 1\]"),
    ({"aggregate": "median"}, r"unknown aggregate 'median', valid choices are \['max', 'mean', 'sum'\]"),
    ({"overrides": {"a.*": 1.2}}, r"overrides\['a.\*'\] must be in \[0, 1\)"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(PipelineError, match=match):
        compiler.PassManager([{"name": "prune_channels", **kwargs}])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_matches_masking_oracle_and_export(name, tmp_path):
    model, x = zoo.build(name)
    model = compiler.trace(model, x)  # prune the traced copy; the oracle runs on the same graph
    gm, report, oracle, out = prune_and_oracle(model, x, ratio=0.3)
    assert rel_err(oracle, out) < 1e-4
    row = report.row("prune_channels")
    assert row.modified and row.params < 0.9 * report.row("trace").params
    if name == "vit_b_16":  # every encoder layer loses heads
        assert sum(g["unit"] == "heads" for g in row.details) == 12
    cm = compiler.compile(gm, x)  # the pruned model is an ordinary module: trace and compile it again
    assert cm.export_onnx(tmp_path / "p.onnx").max_rel_err < 1e-4


def test_plan_save_and_reload_rebuilds_the_pruned_model(tmp_path):
    from passes.pruning.plan import PruningPlan, apply_plan, pruning_plan

    torch.manual_seed(0)
    model = randomize_bn(Mixed())
    x = torch.randn(2, 3, 8, 8)
    cm = compiler.compile(model, x, pipeline=[{"name": "prune_channels", "ratio": 0.4}])
    pruning_plan(cm.graph_module).save(tmp_path / "plan.json")
    torch.save(cm.graph_module.state_dict(), tmp_path / "pruned.pt")

    rebuilt = apply_plan(Mixed(), x, PruningPlan.load(tmp_path / "plan.json"))  # a fresh model of the class
    rebuilt.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))
    assert torch.equal(rebuilt(x), cm(x))
    assert '"format": "fxcompress.pruning_plan/1"' in (tmp_path / "plan.json").read_text()


def test_bad_plan_files(tmp_path):
    from passes.pruning.plan import PruningPlan, apply_plan

    bad = tmp_path / "bad.json"
    bad.write_text('{"keep": {}}')
    with pytest.raises(PipelineError, match="is not a pruning plan"):
        PruningPlan.load(bad)
    with pytest.raises(PipelineError, match=r"names layers this model does not have: \['nope'\]"):
        apply_plan(Mixed().eval(), torch.randn(1, 3, 8, 8), PruningPlan({"nope": [0]}))


def test_bn_scale_importance_removes_the_smallest_gammas():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.9, 0.01, 0.8, 0.02, 0.7, 0.03, 0.6, 0.5]))
    x = torch.randn(1, 3, 6, 6)
    gm, report, oracle, out = prune_and_oracle(model, x, ratio=0.5, importance="bn_scale")
    assert rel_err(oracle, out) < 1e-4
    kept = gm.get_submodule("1").weight.detach()
    assert torch.allclose(kept, torch.tensor([0.9, 0.8, 0.7, 0.6]))


def test_protect_overrides_and_max_ratio():
    model = randomize_bn(Mixed())
    x = torch.randn(1, 3, 8, 8)
    gm, report = compiler.PassManager([PruneChannels(ratio=0.5, protect=["se.1"])]).run(compiler.trace(model, x), (x,))
    assert gm.get_submodule("se.1").out_channels == 6
    assert {r.node: r.reason for r in report.row("prune_channels").refusals}["se_1"] == "protected (protect=)"

    gm, report = compiler.PassManager([PruneChannels(ratio=0.5, overrides={"se.1": 0.0})]).run(compiler.trace(model, x), (x,))
    assert gm.get_submodule("se.1").out_channels == 6 and gm.get_submodule("dw").groups == 12

    gm, _ = compiler.PassManager([PruneChannels(ratio=0.5, max_ratio=0.25)]).run(compiler.trace(model, x), (x,))
    assert gm.get_submodule("c").out_channels >= 6 and gm.get_submodule("a.0").out_channels >= 12


def test_report_prints_groups():
    model = randomize_bn(Mixed())
    cm = compiler.compile(model, torch.randn(1, 3, 8, 8), pipeline=[{"name": "prune_channels", "ratio": 0.5}])
    text = str(cm.report)
    assert "a.0, b.0, c, se.3" in text and "24 -> 12" in text and "total (2)" in text
    assert "prune_channels refused head: reaches the model output" in text


def test_global_ranking_prunes_the_overall_ratio():
    model = randomize_bn(Mixed())
    x = torch.randn(1, 3, 8, 8)
    gm, report = compiler.PassManager([PruneChannels(ratio=0.5, global_ranking=True)]).run(compiler.trace(model, x), (x,))
    groups = report.row("prune_channels").details
    before = sum(g["channels_before"] for g in groups)
    after = sum(g["channels_after"] for g in groups)
    # the lowest half of all 30 units, however they fall between groups - less any unit kept because
    # it was the last of its layer
    assert before == 30 and 15 <= after <= 16
    assert [g["channels_after"] for g in groups] != [12, 3]  # not simply half of each group
    gm2 = compiler.trace(model, x)
    p = PruneChannels(ratio=0.5, global_ranking=True)
    cg = analyse(gm2)
    removed = {e for u in p.plan(gm2, cg)["removed_units"] for e in u}
    assert rel_err(masked_forward(gm2, cg, removed, x), gm(x)) < 1e-4


def test_iterative_cubic_schedule_with_callback_and_composed_plan():
    from passes.pruning.plan import apply_plan, pruning_plan
    from passes.pruning.schedule import cubic_schedule, prune_iteratively

    assert cubic_schedule(0.5, 3) == pytest.approx([0.5 * (1 - (2 / 3) ** 3), 0.5 * (1 - (1 / 3) ** 3), 0.5])
    torch.manual_seed(0)
    model = randomize_bn(Mixed())
    x = torch.randn(2, 3, 8, 8)
    calls = []
    gm = prune_iteratively(model, x, ratio=0.5, steps=3, callback=lambda g, step: calls.append(step))
    assert calls == [0, 1, 2]
    assert gm.get_submodule("se.1").out_channels == 4  # 6 -> 4 -> 4 -> 4: each step floors its count
    assert gm.get_submodule("a.0").out_channels + gm.get_submodule("c").out_channels < 24
    rebuilt = apply_plan(model, x, pruning_plan(gm))  # the composed plan indexes the original model
    rebuilt.load_state_dict(gm.state_dict())
    assert torch.equal(rebuilt(x), gm(x))
    # the composed plan keeps exactly the original channels the steps kept
    kept = pruning_plan(gm).keep["se.1"]
    assert torch.equal(gm.get_submodule("se.1").bias, model.se[1].bias[kept])


@pytest.mark.slow
def test_swin_t_prunes_under_4_gb_peak_memory():
    """Peak RSS of a fresh process that builds, traces and prunes swin_t at 0.3 (issue 4 bound: 4 GB)."""
    import subprocess
    import sys

    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child of this
    # pytest process would report the test runner's own peak (4.3 GB late in a full run).
    code = ("import compiler\nfrom compiler import zoo\nm, x = zoo.build('swin_t')\n"
            "cm = compiler.compile(m, x, pipeline=[{'name': 'prune_channels', 'ratio': 0.3}])\n"
            "assert cm.report.row('prune_channels').modified\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak_gb = int(out.stdout.split()[-1]) / 2**20  # VmHWM is in kB
    assert peak_gb > 0.2, "implausibly small peak: the measurement is broken"
    assert peak_gb < 4.0, f"swin_t pruning peaked at {peak_gb:.2f} GB"
