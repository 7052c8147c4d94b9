import pytest
import torch
import torch.fx as fx
from torch import nn

import compiler
from compiler import Pass, PassResult
from compiler.errors import (
    PassError, PipelineError, PreconditionError, UnknownPassError, VerificationError,
)

from .models import ConvBNReLU, randomize_bn


class Scale(Pass, name="test_scale"):
    """Multiply the output by a factor: lossy by construction."""

    def __init__(self, *, factor: float = 1.0, tolerance: float = 1e-5) -> None:
        self.factor = factor
        self.tolerance = tolerance

    def run(self, gm: fx.GraphModule, ctx) -> PassResult:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            scaled = gm.graph.call_function(torch.mul, (out.args[0], self.factor))
        out.args = (scaled,)
        return PassResult(modified=True, matches=1)


class NeedsConv(Pass, name="test_needs_conv"):
    def __init__(self) -> None:
        pass

    def requires(self, gm, ctx):
        if not any(isinstance(m, nn.Conv2d) for m in gm.modules()):
            raise PreconditionError("test_needs_conv needs a Conv2d")

    def run(self, gm, ctx):
        return PassResult(modified=False)


def model_and_input():
    return randomize_bn(ConvBNReLU()), torch.randn(1, 3, 6, 6)


def test_registered_passes_and_arguments():
    passes = compiler.registered_passes()
    assert {"cleanup", "fold_bn", "fuse"} <= set(passes)
    assert set(passes["fuse"].arguments()) == {"residual", "activations"}


def test_unknown_pass_lists_valid_ones():
    with pytest.raises(UnknownPassError, match=r"unknown pass 'fold_bm', registered passes are \[.*'fold_bn'"):
        compiler.PassManager(["cleanup", "fold_bm"])


def test_unknown_argument_lists_valid_ones():
    with pytest.raises(PipelineError, match=r"pass 'fuse' has no argument\(s\) \['relu'\]; valid arguments are \['activations', 'residual'\]"):
        compiler.PassManager([{"name": "fuse", "relu": True}])


def test_toml_pipeline(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('[[pass]]\nname = "cleanup"\n\n[[pass]]\nname = "fold_bn"\n\n[[pass]]\nname = "fuse"\nresidual = false\n')
    pm = compiler.PassManager(p)
    assert [x.name for x in pm.passes] == ["cleanup", "fold_bn", "fuse"]
    assert pm.passes[2].residual is False
    model, x = model_and_input()
    gm, report = pm.run(compiler.trace(model, x), (x,))
    assert [r.name for r in report.rows] == ["trace", "cleanup", "fold_bn", "fuse"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("[[pass]\nname = 'x'", "is not valid TOML"),
        ("[[pass]]\nname = 'nope'", "unknown pass 'nope'"),
        ("[[pass]]\nmethod = 'x'", "every pass needs a string 'name'"),
        ("passes = 1", r"unknown top-level keys \['passes'\]"),
        ("pass = 1", "must be an array of tables"),
    ],
)
def test_malformed_toml(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(PipelineError, match=match):
        compiler.PassManager(p)


def test_missing_toml_and_unknown_named_pipeline(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        compiler.PassManager(tmp_path / "none.toml")
    with pytest.raises(PipelineError, match=r"neither a named pipeline \['default', 'none'\]"):
        compiler.PassManager("fastest")


def test_failure_names_pass_and_passes_before():
    model = nn.Sequential(nn.Linear(3, 3)).eval()
    x = torch.randn(2, 3)
    pm = compiler.PassManager(["cleanup", "fold_bn", "test_needs_conv"])
    with pytest.raises(PassError) as info:
        pm.run(compiler.trace(model, x), (x,))
    assert "'test_needs_conv' pass after the following passes: ['cleanup', 'fold_bn']" in str(info.value)
    assert isinstance(info.value.__cause__, PreconditionError)


def test_verification_catches_a_lossy_pass_beyond_its_tolerance():
    model, x = model_and_input()
    with pytest.raises(VerificationError, match=r"pass 'test_scale' \(after \['fold_bn'\]\) changed the outputs by max rel error 1\.0"):
        compiler.PassManager(["fold_bn", Scale(factor=2.0)]).run(compiler.trace(model, x), (x,))
    gm, report = compiler.PassManager([Scale(factor=1.001, tolerance=0.01)]).run(compiler.trace(model, x), (x,))
    assert report.row("test_scale").max_rel_err == pytest.approx(1e-3, rel=1e-2)
    gm, report = compiler.PassManager([Scale(factor=2.0)], verify=False).run(compiler.trace(model, x), (x,))
    assert report.row("test_scale").max_rel_err is None


def test_analyses_are_cached_until_a_pass_modifies_the_graph():
    model, x = model_and_input()
    gm = compiler.trace(model, x)
    pm = compiler.PassManager(["cleanup", "cleanup", "fold_bn", "cleanup"])
    seen = []

    class Spy(compiler.instruments.Instrument):
        def after_pass(self, p, gm, ctx, row):
            seen.append(dict(ctx.analyses.computed))

    pm.extra_instruments.append(Spy())
    pm.run(gm, (x,))
    # baseline computes MACs once; unmodified cleanups reuse it; fold_bn invalidates it.
    assert [s["macs"] for s in seen] == [1, 1, 2, 2]


def test_graph_dump(tmp_path):
    model, x = model_and_input()
    compiler.PassManager("default", dump_dir=tmp_path).run(compiler.trace(model, x), (x,))
    files = sorted(f.name for f in tmp_path.iterdir())
    assert files == ["00_trace.py", "01_cleanup.py", "02_fold_bn.py", "03_fuse.py"]
    assert "self.bn" in (tmp_path / "00_trace.py").read_text()
    assert "self.bn" not in (tmp_path / "03_fuse.py").read_text()


def test_report_table_and_json(tmp_path):
    model, x = model_and_input()
    cm = compiler.compile(model, x)
    text = str(cm.report)
    assert "fold_bn" in text and "max rel err" in text
    path = tmp_path / "r.json"
    cm.report.save(path)
    import json

    data = json.loads(path.read_text())
    assert [r["name"] for r in data["rows"]] == ["trace", "cleanup", "fold_bn", "fuse"]
    assert data["rows"][2]["matches"] == 1 and data["rows"][2]["params"] == 8 * 3 * 9 + 8
