"""The cost model: layer geometry in the runtime's kernel families, the roofline, the calibrated fit,
and calibration profiles on disk (stale, foreign, missing, malformed)."""
import json
import math

import pytest
import torch
from torch import nn

import compiler
from compiler.cost import CostModel, Profile, analytic_ms, conv_layer, kernels_fingerprint, measure_ms, module_layers
from compiler.cost.layers import Layer
from compiler.errors import CalibrationError, InputError
from compiler.ops import FusedOp
from compiler.target import Target

CPU = Target(name="test cpu", kind="cpu", compute_units=2, clock_mhz=3500, simd_width=16, local_mem_bytes=2**20,
             global_mem_bytes=2**34, peak_gflops=200.0, bandwidth_gbs=40.0, launch_us=5.0, source="test")

CONVS = [nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.Conv2d(16, 32, 1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 32, 1, 2),
         nn.Conv2d(8, 24, 3, 1, 1), nn.Conv2d(8, 24, 5, 2, 2, groups=2)]


def test_layer_geometry():
    layer = conv_layer(nn.Conv2d(64, 128, 3, 2, 1), (8, 64, 56, 56))
    assert (layer.family, layer.oh, layer.ow) == ("conv", 28, 28)
    assert layer.macs == 8 * 28 * 28 * 128 * 9 * 64
    assert layer.bytes == 4 * (8 * 64 * 56 * 56 + 8 * 128 * 28 * 28 + 128 * 64 * 9)
    chain = nn.Sequential(nn.Conv2d(256, 40, 1), nn.Conv2d(40, 48, 3, 1, 1), FusedOp(nn.Conv2d(48, 256, 1), "relu"))
    layers, out = module_layers(chain, (8, 256, 14, 14))
    assert [ly.family for ly in layers] == ["conv 1x1 (gemm)", "conv", "conv 1x1 (gemm)"]
    assert [(ly.cin, ly.cout) for ly in layers] == [(256, 40), (40, 48), (48, 256)] and out == (8, 256, 14, 14)
    with pytest.raises(InputError, match=r"prices Conv2d, Linear, FusedOp and Sequential.*got BatchNorm2d"):
        module_layers(nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)), (1, 3, 4, 4))
    with pytest.raises(InputError, match=r"Conv2d\(3, 8\) takes \[N, 3, H, W\] input, got \(1, 4, 4, 4\)"):
        conv_layer(nn.Conv2d(3, 8, 1), (1, 4, 4, 4))


def test_families_are_the_runtimes_decisions():
    """The cost model prices the kernel family the OpenCL lowering really launches."""
    pytest.importorskip("pyopencl")
    for conv in CONVS:
        x = torch.randn(2, conv.in_channels, 9, 9)
        try:
            cm = compiler.compile(nn.Sequential(conv).eval(), x, pipeline=["cleanup"], target="opencl")
        except Exception as e:  # noqa: BLE001 - no OpenCL device here
            pytest.skip(f"no OpenCL device: {e}")
        kernels = [s.kernel for s in cm._runner.lowered.steps]
        assert conv_layer(conv, tuple(x.shape)).family in kernels, (conv, kernels)


def test_roofline_is_compute_or_memory_bound():
    big = conv_layer(nn.Conv2d(256, 256, 3, 2, 1), (8, 256, 28, 28))
    assert big.family == "conv" and analytic_ms(big, CPU) == pytest.approx(2 * big.macs / 200e6)  # compute-bound
    wino = conv_layer(nn.Conv2d(256, 256, 3, 1, 1), (8, 256, 14, 14))  # 16 of the direct form's 36 MACs
    assert wino.family == "winograd" and analytic_ms(wino, CPU) == pytest.approx(2 * wino.macs * 16 / 36 / 200e6)
    odd = conv_layer(nn.Conv2d(256, 256, 3, 1, 1), (8, 256, 7, 7))  # 7x7 outputs computed as 8x8
    assert analytic_ms(odd, CPU) == pytest.approx(2 * odd.macs * 16 / 36 * 64 / 49 / 200e6)
    dw = conv_layer(nn.Conv2d(256, 256, 3, 1, 1, groups=256), (8, 256, 14, 14))
    assert analytic_ms(dw, CPU) == pytest.approx(dw.bytes / 40e6)  # memory-bound
    ranks = [conv_layer(nn.Conv2d(r, r, 3, 1, 1), (8, r, 14, 14)) for r in (16, 32, 64, 128)]
    times = [analytic_ms(ly, CPU) for ly in ranks]
    assert times == sorted(times) and times[0] < times[-1]


def _synthetic(a: float, b: float, overhead_ms: float = 0.0) -> list[tuple[Layer, float]]:
    """Samples whose time is exactly an overhead plus the roofline times exp(a + b * log MACs), the
    MACs as the kernel blocks them."""
    out = []
    for cin, cout, hw in [(16, 32, 56), (32, 64, 28), (64, 64, 14), (128, 256, 14), (24, 48, 56), (256, 512, 7),
                          (48, 96, 28), (96, 96, 14), (200, 100, 7), (12, 300, 28), (40, 80, 56), (320, 64, 7),
                          (16, 200, 14), (100, 24, 28), (8, 64, 56), (72, 36, 14)]:
        ly = conv_layer(nn.Conv2d(cin, cout, 3, 1, 1), (8, cin, hw, hw))
        out.append((ly, overhead_ms + analytic_ms(ly, CPU) * math.exp(a + b * math.log(ly.blocking.macs))))
    return out


def test_calibrated_fit_recovers_a_known_correction():
    samples = _synthetic(1.5, -0.05)
    model = CostModel(CPU, Profile(device="test", target=CPU, samples=samples))
    for ly, ms in samples:
        assert model.layer_ms(ly) == pytest.approx(ms, rel=1e-2)
    held_out = conv_layer(nn.Conv2d(80, 160, 3, 1, 1), (8, 80, 28, 28))
    truth = analytic_ms(held_out, CPU) * math.exp(1.5 - 0.05 * math.log(held_out.blocking.macs))
    assert model.layer_ms(held_out) == pytest.approx(truth, rel=2e-2)
    assert CostModel(CPU).layer_ms(held_out) == pytest.approx(analytic_ms(held_out, CPU))  # uncalibrated
    few = CostModel(CPU, Profile(device="test", target=CPU, samples=samples[:3]))  # a constant correction only
    assert few.fits["conv"].w[1:].tolist() == [0.0] * (len(few.fits["conv"].w) - 1)


def test_fit_finds_the_fixed_overhead_and_drops_a_slowed_measurement():
    samples = _synthetic(0.3, 0.0, overhead_ms=0.002)
    layer, ms = samples[4]
    samples[4] = (layer, 2 * ms)  # a neighbour held a core through this one's measurement
    model = CostModel(CPU, Profile(device="test", target=CPU, samples=samples))
    fit = model.fits["conv"]
    assert fit.overhead_ms == 0.002 and fit.dropped == 1
    assert model.layer_ms(layer) == pytest.approx(ms, rel=1e-2)  # the truth, not the outlier
    for ly, t in samples[:4] + samples[5:]:
        assert model.layer_ms(ly) == pytest.approx(t, rel=1e-2)


def test_profile_round_trip_and_typed_errors(tmp_path):
    prof = Profile(device="dev A", target=CPU, samples=_synthetic(0.5, 0.0))
    path = prof.save(tmp_path / "p.json")
    back = Profile.load(path, device="dev A")
    assert back.samples == prof.samples and back.target == CPU and back.kernels == kernels_fingerprint()
    with pytest.raises(CalibrationError, match="measured on 'dev A', not on 'dev B'"):
        Profile.load(path, device="dev B")
    d = json.loads(path.read_text())
    d["kernels"] = "0" * 16
    path.write_text(json.dumps(d))
    with pytest.raises(CalibrationError, match="is stale: the OpenCL kernels changed.*recalibrate"):
        Profile.load(path)
    assert Profile.load(path, allow_stale=True).kernels == "0" * 16
    with pytest.raises(CalibrationError, match="no calibration profile at"):
        Profile.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="is malformed"):
        Profile.load(tmp_path / "bad.json")


def test_measure_ms_times_the_layers_kernel():
    pytest.importorskip("pyopencl")
    try:
        layer, ms = measure_ms(nn.Conv2d(32, 64, 3, 1, 1), (2, 32, 14, 14), repeats=2)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no OpenCL device: {e}")
    assert layer.family == "conv" and 0 < ms < 1000


def test_predict_compiled_prices_every_launch():
    from compiler.cost import predict_compiled

    pytest.importorskip("pyopencl")
    net = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1, groups=16),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10)).eval()
    x = torch.randn(2, 8, 8, 8)
    try:
        cm = compiler.compile(net, x, target="opencl")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no OpenCL device: {e}")
    model = CostModel(CPU)
    pred = predict_compiled(cm, model)
    steps = cm._runner.lowered.steps
    assert [(n, k) for n, k, _ in pred.steps[:-1]] == [(s.node, s.kernel) for s in steps]
    assert {"conv", "dwconv", "gemm", "maxpool"} <= set(pred.by_family())
    conv = next(ms for _, k, ms in pred.steps if k == "conv")
    assert conv == pytest.approx(analytic_ms(conv_layer(net[0], (2, 8, 8, 8)), CPU) + CPU.launch_us * 1e-3)
    assert pred.total_ms == pytest.approx(sum(ms for *_, ms in pred.steps))
    weights = 4 * sum(p.numel() for p in cm.graph_module.parameters())
    assert pred.peak_bytes == cm._runner.arena_bytes + weights  # the runtime's memory plan, and the weights
    with pytest.raises(TypeError, match="compiled for target 'opencl', got target 'torch'"):
        predict_compiled(compiler.compile(net, x), model)


def test_peak_memory_is_the_live_activations_plus_weights():
    from compiler.cost import predict_graph

    net = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 4, 3, 1, 1)).eval()
    gm = compiler.compile(net, torch.randn(1, 3, 8, 8), pipeline=["cleanup"]).graph_module
    # x (192 floats) -> conv (512) -> relu (512) -> conv (256): the peak is conv + relu outputs, 1024
    # floats; the weights are 8*3*9 + 8 + 4*8*9 + 4 = 516 floats
    assert predict_graph(gm, CostModel(CPU)).peak_bytes == 4 * (1024 + 516)


def test_composition_is_fitted_without_an_outlier_network():
    from compiler.cost import Work

    # Networks of copies only (kernel ms = their bytes over the bandwidth): wall = 1.2 x kernels
    # + 5 us a launch + 0.05 ms a call, exactly, except one network that ran 1.6x that.
    networks = []
    for i, (launches, elements) in enumerate([(4, 10**5), (9, 3 * 10**5), (20, 10**6), (6, 4 * 10**6), (30, 2 * 10**5),
                                              (12, 8 * 10**5), (40, 5 * 10**5), (16, 2 * 10**6)]):
        work = [Work(f"n{j}", "copies", None, elements) for j in range(launches)]
        wall = 1.2 * launches * 4 * elements / (CPU.bandwidth_gbs * 1e6) + launches * 0.005 + 0.05
        networks.append((work, 1.6 * wall if i == 2 else wall))
    model = CostModel(CPU, Profile(device="test", target=CPU, networks=networks))
    assert model.networks_dropped == 1
    assert (model.scale, model.step_us, model.call_ms) == pytest.approx((1.2, 5.0, 0.05), rel=1e-6)
    del networks[2]
    clean = CostModel(CPU, Profile(device="test", target=CPU, networks=networks))
    assert clean.networks_dropped == 0 and clean.scale == pytest.approx(1.2)


def test_a_conv_on_the_models_input_is_priced_as_reading_nchw():
    from compiler.cost import compiled_work, graph_work, predict_compiled

    pytest.importorskip("pyopencl")
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    try:
        cm = compiler.compile(net, x, target="opencl")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no OpenCL device: {e}")
    convs = [w.layer for w in compiled_work(cm) if w.kernel == "conv"]
    assert [(ly.cin, ly.nchw, ly.fit_key) for ly in convs] == [(3, True, "conv nchw"), (16, False, "conv")]
    gm = compiler.compile(net, x).graph_module  # planning, before lowering, decides alike
    assert [w.layer.nchw for w in graph_work(gm) if w.layer is not None] == [True, False]
    # The two forms are priced by two fits: here conv.cl on NCHW is calibrated 3x slower.
    plain = [(ly, ms) for ly, ms in _synthetic(0.0, 0.0) if ly.family == "conv"]
    samples = plain + [(Layer(**{**ly.to_dict(), "nchw": True}), 3 * ms) for ly, ms in plain]
    model = CostModel(CPU, Profile(device="test", target=CPU, samples=samples))
    assert set(model.fits) == {"conv", "conv nchw"}
    stem, body = convs
    assert model.layer_ms(stem) == pytest.approx(3 * analytic_ms(stem, CPU), rel=1e-2)
    assert model.layer_ms(body) == pytest.approx(analytic_ms(body, CPU), rel=1e-2)
    assert predict_compiled(cm, model).total_ms > 0


def test_layers_are_timed_reading_what_another_layer_wrote():
    from compiler.cost import kernel_ms_pass, prepare_layer

    pytest.importorskip("pyopencl")
    try:
        stem = prepare_layer(nn.Conv2d(3, 16, 3, 2, 1), (1, 3, 32, 32))
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no OpenCL device: {e}")
    body = prepare_layer(nn.Conv2d(24, 32, 3, 1, 1), (1, 24, 16, 16))
    dw = prepare_layer(nn.Conv2d(24, 24, 3, 1, 1, groups=24), (1, 24, 16, 16))
    assert stem[0].nchw and set(stem[1]()) == {"conv"}  # the model's input, as uploaded
    assert not body[0].nchw and set(body[1]()) >= {"dwconv", "conv"}  # a depthwise layer writes its input
    assert dw[0].family == "dwconv" and set(dw[1]()) >= {"conv 1x1 (gemm)", "dwconv"}  # a 1x1 conv writes it
    ms = kernel_ms_pass([stem, body, dw], repeats=2)
    assert len(ms) == 3 and all(0 < t < 1000 for t in ms)


def test_wall_ms_each_takes_turns_and_spreads_its_rounds():
    import time

    from compiler.cost import wall_ms_each

    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: (calls.append("b"), time.sleep(0.001))}
    t0 = time.perf_counter()
    ms = wall_ms_each(fns, rounds=3, per_block=2, gap_s=0.0, span_s=0.6)
    assert 0.4 <= time.perf_counter() - t0 < 0.58  # the rounds start 0, 0.2 and 0.4 s in
    turns = [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c]
    assert turns == ["a", "b"] * 3
    assert set(ms) == {"a", "b"} and ms["b"] >= 1.0 > ms["a"]
