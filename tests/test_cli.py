import json
import textwrap

import onnx
import pytest

from compiler.cli import main

MODEL = textwrap.dedent(
    """
    from torch import nn

    def small():
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(),
                             nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    """
)


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "model.py"
    p.write_text(MODEL)
    return p


def test_compile_exports_and_writes_report(model_file, tmp_path, capsys):
    out, rep = tmp_path / "m.onnx", tmp_path / "r.json"
    rc = main(["compile", f"{model_file}:small", "--input-shape", "2,3,8,8", "-o", str(out), "--report", str(rep)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fold_bn" in text and "onnxruntime parity" in text
    onnx.checker.check_model(onnx.load(out))
    data = json.loads(rep.read_text())
    assert [r["name"] for r in data["rows"]] == ["trace", "cleanup", "fold_bn", "fuse"]
    assert data["export"]["max_rel_err"] < 1e-5


def test_compile_with_toml_pipeline_and_onnx_target(model_file, tmp_path, capsys):
    pipe = tmp_path / "p.toml"
    pipe.write_text('[[pass]]\nname = "fold_bn"\n')
    rc = main(["compile", f"{model_file}:small", "--input-shape", "1,3,8,8", "--pipeline", str(pipe), "--target", "onnx"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "target onnx" in text and "fuse" not in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["{m}:nope", "--input-shape", "1,3,8,8"], "has no callable 'nope'; callables defined there: ['small']"),
        (["/no/such.py:small", "--input-shape", "1,3,8,8"], "model file '/no/such.py' does not exist"),
        (["{m}", "--input-shape", "1,3,8,8"], "PATH/TO/file.py:factory"),
        (["{m}:small", "--input-shape", "1,3,8,8", "-o", "/no/dir/m.onnx"], "directory '/no/dir' does not exist"),
        (["{m}:small", "--input-shape", "1,4,8,8"], "do not fit the model"),
        (["{m}:small", "--input-shape", "1,3,8,8", "--pipeline", "nope.toml"], "does not exist"),
    ],
)
def test_errors_are_one_clear_line(model_file, capsys, args, message):
    rc = main(["compile", *[a.format(m=model_file) for a in args]])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("fxcompress: error: ") and message in err


def test_bad_shape_is_a_usage_error(model_file, capsys):
    with pytest.raises(SystemExit) as info:
        main(["compile", f"{model_file}:small", "--input-shape", "1,x"])
    assert info.value.code == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_passes_lists_arguments(capsys):
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    assert "fold_bn: Fold BatchNorm" in out
    assert "    residual: bool = True" in out


def test_calibrate_writes_a_profile_the_cost_model_loads(tmp_path, capsys):
    pytest.importorskip("pyopencl")
    from compiler.cost import CostModel, Profile
    from compiler.cost.families import FAMILIES

    try:
        from runtime.opencl.device import open_device

        name = open_device().name
    except Exception as e:  # noqa: BLE001 - no OpenCL device here
        pytest.skip(f"no OpenCL device: {e}")
    out = tmp_path / "profile.json"
    assert main(["calibrate", "--per-family", "1", "--networks", "4", "-o", str(out), "--no-progress"]) == 0
    assert str(out) in capsys.readouterr().out
    profile = Profile.load(out, device=name)
    assert sorted(layer.family for layer, _ in profile.samples) == sorted(FAMILIES)
    assert all(ms > 0 for _, ms in profile.samples)
    assert len(profile.networks) == 4 and all(ms > 0 and len(work) > 3 for work, ms in profile.networks)
    model = CostModel(profile.target, profile)  # four networks: the composition is fitted
    assert model.scale > 0 and model.step_us >= 0 and model.call_ms >= 0


def _matches(report: str, name: str) -> int:
    """The matches column of pass ``name`` in a printed report."""
    row = next(line for line in report.splitlines() if line.split()[:1] == [name])
    return int(row.split()[3])


TIMM_FACTORY = textwrap.dedent(
    """
    import timm  # imports torchvision: dies on CPU torch unless `import compiler` patched it first

    def tiny():
        return timm.create_model("resnet18", pretrained=False, num_classes=10)
    """
)


def test_a_factory_that_imports_timm_runs_in_a_fresh_process(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "user_model.py"
    f.write_text(TIMM_FACTORY)
    run = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", f"{f}:tiny", "--input-shape", "1,3,32,32"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert _matches(run.stdout, "fold_bn") == 20  # every BatchNorm of timm's resnet18 folded


@pytest.mark.parametrize("spec", ["timm:lcnet_050", "torchvision:mobilenet_v3_small"])
def test_zoo_models_by_name(spec, capsys):
    assert main(["compile", spec, "--input-shape", "1,3,32,32"]) == 0
    out = capsys.readouterr().out
    assert _matches(out, "fold_bn") > 10 and _matches(out, "fuse") > 10
    if spec.startswith("timm:"):  # timm's BatchNormAct2d asserts on x.ndim: folded, and said so
        assert "canonical graph: " in out and "asserts removed" in out


def test_weights_are_loaded_with_weights_only(tmp_path, capsys):
    import torch

    from compiler import zoo

    model = zoo.randomize(zoo.import_timm().create_model("lcnet_050", pretrained=False), seed=3)
    good = tmp_path / "w.pt"
    torch.save(model.state_dict(), good)
    rep = tmp_path / "r.json"
    assert main(["compile", "timm:lcnet_050", "--weights", str(good), "--input-shape", "1,3,32,32", "--report", str(rep)]) == 0
    # the randomised statistics were loaded: a fresh lcnet_050 has running_var 1, which folding would not change
    assert json.loads(rep.read_text())["rows"][2]["matches"] > 0

    class Payload:  # a pickle that would run code on load
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "bad.pt"
    torch.save({"x": Payload()}, bad)
    capsys.readouterr()
    assert main(["compile", "timm:lcnet_050", "--weights", str(bad), "--input-shape", "1,3,32,32"]) == 1
    err = capsys.readouterr()
    assert "weights_only=True" in err.err and "pwned" not in err.out

    torch.save({"nope.weight": torch.zeros(1)}, bad)
    assert main(["compile", "timm:lcnet_050", "--weights", str(bad), "--input-shape", "1,3,32,32"]) == 1
    assert "does not fit the model: missing keys" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("timm:resnet_nope", "timm has no model 'resnet_nope'"),
    ("torchvision:resnet_nope", "torchvision has no classification model 'resnet_nope'; valid: ["),
])
def test_unknown_zoo_names(spec, message, capsys):
    assert main(["compile", spec, "--input-shape", "1,3,32,32"]) == 1
    assert message in capsys.readouterr().err
