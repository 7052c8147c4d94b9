"""End to end on Fashion-MNIST: train, compress with every method, distil, measure accuracy and latency.

    .venv/bin/python benchmarks/compress_fashion_mnist.py [--quick] [--models resnet8w,small_cnn] [--out DIR] [--cache DIR]

1. Trains the reference models of ``examples/fashion_mnist.py`` (``small_cnn`` and ``resnet8w``, the
   ResNet-8 at widths 32/64/128, for 3 epochs; ``--models resnet8`` adds the narrow ResNet-8, 2), or
   loads them from ``--cache`` (weights written atomically, read with weights_only).
2. Compiles each with Tucker-2, CP, TT and SVD factorization and with structured channel pruning,
   plus pruning followed by Tucker-2; small_cnn at two or three strengths per method, ResNet-8 at
   one. Factorization ranks are parameter budgets per layer (``"params:p"``), so the methods compare
   at equal size; the stem and the head are left alone (factorize's skip_first / skip_last). And
   small_cnn through the ``budget`` pass: a params and latency budget, the plan (per layer keep /
   Tucker-2 / SVD, per channel group a pruning ratio in multiples of 8 channels) chosen by this
   device's calibrated cost model (calibrated first if no profile exists, about 1.5 min) on 256
   training images.
   The compass goal, on ``resnet8w``: the planner in the documented one call (``compile(budget=
   Budget(params=p0 // 10, latency_ratio=0.3), finetune=FineTune(epochs=2, stages=(0.5,)),
   train_data=, val_data=)``: probe fine-tunes of the best candidate plans, one stage half way with
   1 epoch of recovery, 3 epochs in all) against uniform recipes (prune 0.6, 0.7, 0.8) fine-tuned 3
   epochs each; it is met when the planner's point has >= 10x fewer params,
   >= 3x lower measured OpenCL latency, <= 1 point lost, and beats by accuracy every uniform recipe
   that measures as fast (``compass``).
3. Fine-tunes every point by distillation with the original as teacher (``FineTune``). The main
   points, the candidates for the issue's target (>= 4x fewer params, >= 2x lower latency, <= 1
   point of accuracy lost), get 3 epochs over the whole training split; the sweep gets 1 epoch over
   its first 10,000 images, which keeps the run near 30 minutes on 2 cores. Points marked ``plain``
   are also fine-tuned without distillation (``alpha=0``: cross-entropy on labels only), from the
   same compressed weights, for the same epochs.
4. Reports per point: test accuracy before and after fine-tuning, params, MACs per image, compile
   time, and measured latency of the fine-tuned graph on our OpenCL target and in onnxruntime
   (2 threads), at batch 256 and 1. Latency is measured once all the training is done, in rounds
   over every graph; each runner is timed in its own block (a pause, warm-up calls, then the
   repeats), never call by call: the thread pools of torch, onnxruntime and PoCL share two cores
   and keep spinning after a call (``_timing.blocked_median_ms``). Per runner and graph, the least
   block median over the rounds: on this shared VM one compiled graph's time moves in phases of
   seconds (25 to 55 ms per call for one model within a minute), and the least block is the
   undisturbed device, as ``compiler.cost.wall_ms`` and ``_timing.best_block_ms`` take it (with
   the median of 3 rounds, the acceptance candidate's OpenCL speed-up read 1.60x in one run and
   2.05 to 2.2x when its timing alone was repeated on the same graphs).

Writes ``results.json``, ``pareto.png`` (accuracy against measured latency and against params) and
``table.md`` into ``--out``, all atomically (``accuracy.json`` first, before the timing); prints the
table. ``--quick`` is a smoke run: a 3,000
image subset, 1 epoch everywhere, fewer points and repeats.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import blocked_median_ms, markdown_table  # noqa: E402  (also unshadows the runtime package)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import compiler  # noqa: E402
from compiler import Budget  # noqa: E402
from compiler.analysis import count_params  # noqa: E402
from compiler.cost.calibrate import ensure_profile  # noqa: E402
from compiler.data import fashion_mnist_loaders  # noqa: E402
from compiler.fileio import atomic_dir, write_text_atomic  # noqa: E402
from compiler.finetune import FineTune, finetune  # noqa: E402
from fashion_mnist import evaluate, resnet, small_cnn, trained  # noqa: E402
from runtime.onnx import OrtRunner, export_onnx  # noqa: E402

MODELS = {"small_cnn": small_cnn, "resnet8": lambda: resnet(8), "resnet8w": lambda: resnet(8, width=32)}
# the compass network alone by default: small_cnn's sweep (15 minutes cold here) and the compass (33)
# together are past the 30 allowed; `--models small_cnn,resnet8w` runs both
DEFAULT_MODELS = "resnet8w"
DEFAULT_CACHE = Path.home() / ".cache" / "fxcompress" / "bench"
TARGET = dict(params=4.0, speedup=2.0, acc_loss_pt=1.0)  # the recovery issue's acceptance point, on small_cnn
# The compass goal, on the ResNet-style reference (ResNet-8 at widths 32/64/128: nine convs, 308k
# params): the budget planner's one-call plan against uniform recipes at the same measured latency
COMPASS_MODEL = "resnet8w"
COMPASS_TARGET = dict(params=10.0, speedup=3.0, acc_loss_pt=1.0)
BOTH, SMALL, COMPASS = ("small_cnn", "resnet8"), ("small_cnn",), (COMPASS_MODEL,)


@dataclass(frozen=True, kw_only=True)
class Point:
    """One compression of a model: the passes between ``fold_bn`` and ``fuse``."""

    label: str
    method: str  # the plot's marker: original, tucker2, cp, tt, svd, prune, prune+tucker2
    passes: tuple[dict, ...] = ()
    main: bool = False  # an acceptance candidate: the full fine-tune (Settings.finetune), else the sweep's
    plain: bool = False  # also fine-tune without distillation, for the KD against plain comparison
    models: tuple[str, ...] = BOTH
    quick: tuple[str, ...] = ()  # the models it runs on with --quick
    example_batch: int | None = None  # compile on this many training images (the budget pass's inputs), else 1 random
    one_call: dict | None = None  # compile(budget=Budget(**fractions of the original), finetune=, train_data=, val_data=)

    @property
    def pipeline(self) -> list:
        return ["cleanup", "fold_bn", *self.passes, "fuse"]


def _factorize(method: str, budget: float, **kw) -> Point:
    rank = f"params:{budget:g}"
    return Point(label=f"{method} {rank}", method=method, passes=({"name": "factorize", "method": method, "rank": rank},), **kw)


def _prune(ratio: float, **kw) -> Point:
    return Point(label=f"prune {ratio:g}", method="prune", passes=({"name": "prune_channels", "ratio": ratio},), **kw)


def _prune_tucker2(ratio: float, budget: float, **kw) -> Point:
    return Point(label=f"prune {ratio:g} + tucker2 params:{budget:g}", method="prune+tucker2", **kw,
                 passes=({"name": "prune_channels", "ratio": ratio}, {"name": "factorize", "method": "tucker2", "rank": f"params:{budget:g}"}))


def _budget(label: str, budget: dict, **kw) -> Point:
    """The budget pass's plan: per layer keep / Tucker-2 / SVD, per channel group a pruning ratio, chosen
    by the OpenCL device's calibrated cost model at batch 256, scored on 256 training images."""
    return Point(label=label, method="budget", example_batch=256, **kw,
                 passes=({"name": "budget", "budget": budget,
                          "ranks": [0.75, 0.5, 0.35, 0.25],  # the pass's defaults when the README's run was made
                          "prune_ratios": [0.25, 0.5, 0.625, 0.75]},))


# ResNet-8 fine-tunes about 2.5x slower per image than small_cnn: it gets one strength per method
POINTS = (
    Point(label="original", method="original", models=BOTH + COMPASS, quick=BOTH + COMPASS),
    *(_factorize(m, 0.5) for m in ("tucker2", "cp", "tt", "svd")),
    *(_factorize(m, 0.25, models=SMALL, quick=SMALL if m == "tucker2" else ()) for m in ("tucker2", "cp", "tt", "svd")),
    _prune(0.3, models=SMALL),
    _prune(0.5, plain=True, quick=BOTH),
    _prune_tucker2(0.5, 0.5, plain=True, quick=SMALL),
    # the acceptance candidates, 4.4x and 4.3x fewer params on small_cnn (prune 0.5 alone gives 3.6x)
    _prune_tucker2(0.5, 0.8, main=True, plain=True, models=SMALL),
    _prune(0.55, models=SMALL),
    # the budget pass aiming at the target: 4.2x fewer params, half the predicted latency at batch 256
    _budget("budget params 14.6k, latency 0.5", {"params": 14_600, "latency_ratio": 0.5}, main=True,
            models=SMALL, quick=SMALL),
    # the compass: the planner in one call (probes, two stages, 3 epochs in all) against uniform
    # recipes around its latency, each fine-tuned 3 epochs the same way
    Point(label="planner: budget params 1/10, latency 0.3 (one call)", method="budget", main=True, models=COMPASS,
          quick=COMPASS, example_batch=256, one_call={"params": 0.1, "latency_ratio": 0.3}),  # 0.3: room under the 3x line for timing noise
    *(_prune(r, main=True, models=COMPASS, quick=COMPASS if r == 0.7 else ()) for r in (0.6, 0.7, 0.8)),
    # prune 0.5 + Tucker-2 params:0.4 (9.71x, 1.87x on OpenCL, -1.22 points when last run) is left out: never as
    # fast as a 3x plan, so never the comparison the goal asks for, and its 3 epochs kept a cold run over 30 minutes
)


@dataclass(frozen=True, kw_only=True)
class Settings:
    # of the reference models, AdamW one-cycle (examples/fashion_mnist.py). ResNet-8 trains 2: its 3
    # epochs took 15 of a cold run's 34 minutes here (91.06% test accuracy), past the 30 allowed
    train_epochs: tuple[tuple[str, int], ...] = (("small_cnn", 3), ("resnet8", 2), ("resnet8w", 3))
    finetune: FineTune = FineTune(epochs=3, progress=False)  # main points, on the whole training split
    # the planner's one call: a stage at half the way (log scale) with 1 epoch, then 2: 3 epochs in all
    one_call_finetune: FineTune = FineTune(epochs=2, stages=(0.5,), stage_epochs=1, progress=False)
    sweep_epochs: int = 1  # the other points: fewer epochs on fewer images, to fit the run in 30 min on 2 cores
    sweep_images: int | None = 10_000  # the first N training images (None: all)
    train_limit: int | None = None  # images read from the training split, validation included
    val_size: int = 5000
    test_limit: int | None = None
    batches: tuple[tuple[int, int], ...] = ((256, 10), (1, 50))  # (batch size, timed calls per block)
    rounds: int = 5  # timed blocks per runner and graph, the graphs taken in turn; the least counts


QUICK = Settings(train_epochs=(("small_cnn", 1), ("resnet8", 1), ("resnet8w", 1)), finetune=FineTune(epochs=1, progress=False),
                 one_call_finetune=FineTune(epochs=1, progress=False, probes=1, probe_batches=5), sweep_images=None,
                 train_limit=3000, val_size=500, test_limit=1000, batches=((256, 5), (1, 20)), rounds=1)


def reference(name: str, loaders, s: Settings, cache: Path) -> tuple[nn.Module, dict]:
    """The trained reference model, from the cache when an identical recipe was trained before."""
    torch.manual_seed(0)
    model = MODELS[name]()
    info = trained(name, model, loaders.train.dataset, epochs=dict(s.train_epochs)[name], cache=cache,
                   recipe=f"limit={s.train_limit}|val={s.val_size}|seed=0")
    return model, info


def latencies(graphs: list[nn.Module], s: Settings, workdir: Path) -> list[dict]:
    """OpenCL and onnxruntime latency of every graph at each batch size, with OpenCL compile time and parity.

    Measured after all the training, in rounds over all graphs (each runner in its own block), so load
    from other processes lands on every point alike and the ratios against the original hold; the
    least block median over the rounds counts.
    """
    x1 = torch.randn(1, 1, 28, 28)
    out: list[dict] = [{} for _ in graphs]
    orts = []
    for i, gm in enumerate(graphs):
        onnx = export_onnx(gm, (x1,), workdir / f"model{i}.onnx", dynamic_batch=True)
        with torch.no_grad():
            orts.append(OrtRunner(onnx.path, gm(x1), threads=2))
    for b, repeats in s.batches:
        x = torch.randn(b, 1, 28, 28)
        ocls = []
        for gm, res in zip(graphs, out):
            t0 = time.perf_counter()
            ocls.append(compiler.compile(gm, x, pipeline="none", target="opencl"))
            with torch.no_grad():
                ref = gm(x)
                err = ((ocls[-1](x) - ref).abs().max() / ref.abs().max()).item()
            res[str(b)] = {"opencl_compile_s": time.perf_counter() - t0, "opencl_rel_err": err,
                           "opencl_fallbacks": ocls[-1].report.backend["fallbacks"]}
        rounds: list[list[dict]] = [[] for _ in graphs]
        for _ in range(s.rounds):
            for i, (ocl, ort) in enumerate(zip(ocls, orts)):
                rounds[i].append(blocked_median_ms({"opencl": lambda: ocl(x), "onnxruntime": lambda: ort(x)}, rounds=1,
                                                   per_block=repeats, warmup=3, settle_s=0.2))
        for res, ms in zip(out, rounds):
            res[str(b)].update({f"{k}_ms": min(m[k] for m in ms) for k in ("opencl", "onnxruntime")})
        del ocls  # frees the device arenas before the next batch size
    return out


def run_point(model: nn.Module, p: Point, loaders, sweep_loader: DataLoader, s: Settings) -> tuple[dict, nn.Module]:
    """Compile, evaluate, fine-tune; returns the row and the graph to time (the distilled one)."""
    x1 = torch.randn(1, 1, 28, 28)
    if p.example_batch:
        x1 = torch.stack([loaders.train.dataset[i][0] for i in range(p.example_batch)])
    t0 = time.perf_counter()
    if p.one_call:
        return _one_call(model, p, x1, loaders, s)
    cm = compiler.compile(model, x1, pipeline=p.pipeline)
    r = {"point": p.label, "method": p.method, "pipeline": p.pipeline, "compile_s": time.perf_counter() - t0,
         "params": count_params(cm.graph_module), "macs": cm.report.rows[-1].macs // len(x1),  # per image
         "refusals": [f"{row.name}: {f.node}: {f.reason}" for row in cm.report.rows for f in row.refusals]}
    r["acc_before"] = evaluate(cm.graph_module, loaders.test)[1]
    best = cm.graph_module
    if p.passes:  # the original is not fine-tuned: it is the teacher
        kd, data = (s.finetune, loaders.train) if p.main else (replace(s.finetune, epochs=s.sweep_epochs), sweep_loader)
        r["finetune"] = {"epochs": kd.epochs, "images": len(data.dataset)}
        for kind, cfg in {"kd": kd, **({"plain": replace(kd, alpha=0.0)} if p.plain else {})}.items():
            student = copy.deepcopy(cm.graph_module)  # both students start from the same compressed weights
            t0 = time.perf_counter()
            result = finetune(student, model, data, loaders.val, config=cfg)
            r[f"finetune_{kind}_s"] = time.perf_counter() - t0
            r[f"acc_{kind}"] = evaluate(student, loaders.test)[1]
            r[f"history_{kind}"] = result.to_dict()["history"]
            if kind == "kd":
                best = student
    return r, best.eval()


def _one_call(model: nn.Module, p: Point, x: torch.Tensor, loaders, s: Settings) -> tuple[dict, nn.Module]:
    """The documented flow: ``compile(budget=, finetune=, train_data=, val_data=)``, the budget given as
    fractions of the original's params and latency; the fine-tune (stages included) is part of the call."""
    p0 = count_params(model)
    budget = Budget(params=int(p.one_call["params"] * p0), latency_ratio=p.one_call["latency_ratio"])
    ft = s.one_call_finetune
    t0 = time.perf_counter()
    cm = compiler.compile(model, x, budget=budget, finetune=ft, train_data=loaders.train, val_data=loaders.val)
    seconds = time.perf_counter() - t0
    summary = cm.report.row("budget").summary
    gm = cm.graph_module
    epochs = ft.epochs + ft.stage_epochs * len(ft.stages)
    r = {"point": p.label, "method": p.method, "pipeline": "compile(budget=..., finetune=...)", "compile_s": seconds,
         "params": count_params(gm), "macs": cm.report.rows[-1].macs // len(x),
         "refusals": [f"{row.name}: {f.node}: {f.reason}" for row in cm.report.rows for f in row.refusals],
         "acc_before": None,  # the fine-tune is inside the call; report.accuracy has the validation figures
         "acc_kd": evaluate(gm, loaders.test)[1], "finetune": {"epochs": epochs, "images": len(loaders.train.dataset)},
         "finetune_kd_s": seconds, "accuracy": cm.report.accuracy, "plan": summary.get("plan"),
         "prune": summary.get("prune"), "uniform": summary.get("uniform"), "allocator": summary.get("allocator"),
         # the device check's timing of the last plan (against the model the stage before left, when staged)
         "measured_ms": summary.get("measured_ms"), "stages": summary.get("stages")}
    return r, gm.eval()


def pareto_front(costs: list[float], accs: list[float]) -> list[int]:
    """Indices of the points no other point beats on both (lower cost, higher accuracy), by cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accs[i]))
    front, best = [], -float("inf")
    for i in order:
        if accs[i] > best:
            front.append(i)
            best = accs[i]
    return front


def final_acc(r: dict) -> float:
    return r.get("acc_kd", r["acc_before"])


def add_ratios(points: list[dict]) -> None:
    """Ratios against the model's original row (params, MACs, latency) and the accuracy change in points."""
    base = {r["model"]: r for r in points if r["method"] == "original"}
    for r in points:
        o = base[r["model"]]
        r["params_x"], r["macs_x"] = o["params"] / r["params"], o["macs"] / max(r["macs"], 1)
        r["acc_delta_pt"] = 100 * (final_acc(r) - final_acc(o))
        for b, lat in r["latency"].items():
            for rt in ("opencl", "onnxruntime"):
                lat[f"{rt}_speedup"] = o["latency"][b][f"{rt}_ms"] / lat[f"{rt}_ms"]


def acceptance(points: list[dict], model: str = "small_cnn", batch: str = "256", target: dict = TARGET,
               methods: tuple[str, ...] | None = None) -> dict:
    """A target (by default the recovery issue's: >= 4x fewer params, >= 2x lower OpenCL latency, <= 1 pt
    lost after distillation) over ``model``'s points (of ``methods``, or all).

    Returns the passing point with the best accuracy, or, when none passes, the one that misses by least.
    """
    cands = [r for r in points if r["model"] == model and r["method"] != "original" and (methods is None or r["method"] in methods)]

    def misses(r: dict) -> list[str]:
        out = []
        if r["params_x"] < target["params"]:
            out.append(f"params {r['params_x']:.2f}x < {target['params']:g}x")
        if r["latency"][batch]["opencl_speedup"] < target["speedup"]:
            out.append(f"OpenCL {r['latency'][batch]['opencl_speedup']:.2f}x < {target['speedup']:g}x")
        if -r["acc_delta_pt"] > target["acc_loss_pt"]:
            out.append(f"accuracy -{-r['acc_delta_pt']:.2f} pt > {target['acc_loss_pt']:g} pt")
        return out

    if not cands:
        return {"met": False, "point": None, "misses": ["no compressed points"]}
    passing = [r for r in cands if not misses(r)]
    best = (max(passing, key=final_acc) if passing
            else min(cands, key=lambda r: (len(misses(r)), -final_acc(r))))
    lat = best["latency"][batch]
    return {"met": bool(passing), "model": model, "batch": int(batch), "point": best["point"],
            "params_x": best["params_x"], "opencl_speedup": lat["opencl_speedup"],
            "onnxruntime_speedup": lat["onnxruntime_speedup"], "acc_delta_pt": best["acc_delta_pt"],
            "acc_kd": best.get("acc_kd"), "acc_plain": best.get("acc_plain"), "misses": misses(best)}


def compass(points: list[dict], batch: str = "256", slack: float = 0.05) -> dict:
    """The compass goal on ``COMPASS_MODEL``: the planner's point meets ``COMPASS_TARGET``, and beats by
    accuracy every uniform recipe that measures as fast or faster (within ``slack``) on OpenCL. With
    no uniform recipe that fast the comparison cannot be made, and the goal is not met."""
    v = acceptance(points, COMPASS_MODEL, batch, COMPASS_TARGET, methods=("budget",))
    if v["point"] is None:
        return v
    planner = next(r for r in points if r["model"] == COMPASS_MODEL and r["point"] == v["point"])
    ms = planner["latency"][batch]["opencl_ms"]
    uniform = [r for r in points if r["model"] == COMPASS_MODEL and r["method"] not in ("original", "budget")]
    rivals = [r for r in uniform if r["latency"][batch]["opencl_ms"] <= (1 + slack) * ms]
    best = max(rivals, key=final_acc, default=None)
    v["uniform"] = [{"point": r["point"], "opencl_ms": r["latency"][batch]["opencl_ms"], "acc": final_acc(r),
                     "params_x": r["params_x"]} for r in uniform]
    v["best_uniform_as_fast"] = None if best is None else best["point"]
    if best is None:
        v["misses"].append(f"no uniform recipe measures within {slack:.0%} of the planner's {ms:.2f} ms: not compared")
    elif final_acc(best) >= final_acc(planner):
        v["misses"].append(f"uniform '{best['point']}' ({best['latency'][batch]['opencl_ms']:.2f} ms) is as accurate or "
                           f"more ({100 * final_acc(best):.2f}% against {100 * final_acc(planner):.2f}%)")
    v["met"] = not v["misses"]
    return v


def table(points: list[dict], batches: list[int]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    head = ["model", "point", "params (fewer)", "MACs (fewer)", "acc before FT", "acc KD", "acc plain FT", "Δ pt (KD)"]
    for b in batches:
        head += [f"OpenCL ms b{b} (speed-up)", f"ORT ms b{b} (speed-up)"]
    head += ["compile s", "fine-tune", "KD s"]
    rows = []
    for r in points:
        row = [r["model"], r["point"], f"{r['params']:,} ({r['params_x']:.2f}x)", f"{r['macs'] / 1e6:.2f}M ({r['macs_x']:.2f}x)",
               pct(r["acc_before"]), pct(r.get("acc_kd")), pct(r.get("acc_plain")), f"{r['acc_delta_pt']:+.2f}"]
        for b in batches:
            lat = r["latency"][str(b)]
            row += [f"{lat['opencl_ms']:.2f} ({lat['opencl_speedup']:.2f}x)", f"{lat['onnxruntime_ms']:.2f} ({lat['onnxruntime_speedup']:.2f}x)"]
        ft = r.get("finetune")
        row += [f"{r['compile_s']:.1f}", f"{ft['epochs']} ep x {ft['images']:,}" if ft else "-",
                f"{r['finetune_kd_s']:.0f}" if ft else "-"]
        rows.append(row)
    return markdown_table(head, rows)


def plot(points: list[dict], path: Path, batch: str = "256") -> None:
    """Accuracy after distillation against OpenCL and onnxruntime latency, and against params; fronts drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = {"original": "*", "tucker2": "o", "cp": "s", "tt": "^", "svd": "v", "prune": "D", "prune+tucker2": "P",
               "budget": "X"}
    axes_spec = [(f"OpenCL latency, batch {batch} (ms)", lambda r: r["latency"][batch]["opencl_ms"]),
                 (f"onnxruntime latency, batch {batch} (ms)", lambda r: r["latency"][batch]["onnxruntime_ms"]),
                 ("parameters", lambda r: r["params"])]
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(16, 5), constrained_layout=True)
    for (xlabel, cost), ax in zip(axes_spec, axes):
        for c, model in enumerate(dict.fromkeys(r["model"] for r in points)):
            rs = [r for r in points if r["model"] == model]
            xs, ys = [cost(r) for r in rs], [100 * final_acc(r) for r in rs]
            for r, x, y in zip(rs, xs, ys):
                ax.scatter(x, y, marker=markers.get(r["method"], "x"), color=f"C{c}", s=80 if r["method"] == "original" else 36)
            front = pareto_front(xs, ys)
            ax.plot([xs[i] for i in front], [ys[i] for i in front], color=f"C{c}", lw=1, alpha=0.6, label=f"{model} front")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy after distillation (%)")
        ax.grid(alpha=0.3)
    for m, mk in markers.items():
        axes[-1].scatter([], [], marker=mk, color="gray", label=m)
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Fashion-MNIST: compression points after <= 3 epochs of distillation (measured on this machine)")
    with atomic_dir(path) as tmp:
        fig.savefig(tmp / path.name, dpi=80)
        os.replace(tmp / path.name, path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 3,000 images, 1 epoch, fewer points (< 3 min)")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, of {list(MODELS)} (default: %(default)s)")
    ap.add_argument("--out", type=Path, help="write results.json, pareto.png and table.md here")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="trained reference weights (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else Settings()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    loaders = fashion_mnist_loaders(batch_size=128, val_size=s.val_size, train_limit=s.train_limit, test_limit=s.test_limit)
    sweep_loader = loaders.train if s.sweep_images is None else DataLoader(
        Subset(loaders.train.dataset, range(min(s.sweep_images, len(loaders.train.dataset)))),
        batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
    profile, took = ensure_profile()  # the budget points plan with the device's calibrated cost model
    if took is not None:
        print(f"calibrated this device's cost model in {took:.0f} s: {profile}", file=sys.stderr)
    points, graphs, refs = [], [], {}
    for name in args.models.split(","):
        model, refs[name] = reference(name, loaders, s, args.cache)
        refs[name]["test_acc"] = evaluate(model, loaders.test)[1]
        print(f"{name}: {count_params(model):,} params, test acc {refs[name]['test_acc']:.4f}"
              f" ({'trained in %.0f s' % refs[name]['train_s'] if refs[name]['train_s'] else 'cached'})", file=sys.stderr, flush=True)
        for p in POINTS:
            if name not in (p.quick if args.quick else p.models):
                continue
            t0 = time.perf_counter()
            r, gm = run_point(model, p, loaders, sweep_loader, s)
            points.append({"model": name, **r})
            graphs.append(gm)
            print(f"  {p.label}: {r['params']:,} params, acc {r['acc_before'] or float('nan'):.4f} -> KD {r.get('acc_kd', '-')}"
                  f" / plain {r.get('acc_plain', '-')} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    if args.out:  # the accuracy results survive a failure while timing
        write_text_atomic(args.out / "accuracy.json", json.dumps({"references": refs, "points": points}, indent=2) + "\n")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for r, lat in zip(points, latencies(graphs, s, Path(d))):
            r["latency"] = lat
    print(f"latency of {len(points)} graphs measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    add_ratios(points)
    verdict = acceptance(points) if "small_cnn" in refs else None
    goal = compass(points) if COMPASS_MODEL in refs else None
    md = table(points, [b for b, _ in s.batches])
    wall = time.perf_counter() - t_start
    print(md)
    if verdict:
        print(f"\nacceptance ({'met' if verdict['met'] else 'NOT met'}): {json.dumps(verdict)}")
    if goal:
        print(f"\ncompass goal on {COMPASS_MODEL} ({'met' if goal['met'] else 'NOT met'}): {json.dumps(goal)}")
    print(f"\nwall time {wall:.0f} s")
    if args.out:
        config = {"quick": args.quick, "settings": asdict(s), "threads": args.threads}
        write_text_atomic(args.out / "results.json", json.dumps(
            {"config": config, "references": refs, "points": points, "acceptance": verdict, "compass": goal,
             "wall_s": wall}, indent=2) + "\n")
        write_text_atomic(args.out / "table.md", md + "\n")
        plot(points, args.out / "pareto.png", str(s.batches[0][0]))


if __name__ == "__main__":
    main()
