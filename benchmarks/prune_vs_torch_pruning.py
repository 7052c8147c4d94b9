"""Structured channel pruning, side by side: fxcompress ``prune_channels`` against Torch-Pruning 1.6.1.

    .venv/bin/pip install -c constraints.txt torch-pruning==1.6.1     # bench-only; see requirements.txt
    .venv/bin/python benchmarks/prune_vs_torch_pruning.py [--zoo all|timm|torchvision] [--quick]
                     [--models timm:a,torchvision:b] [--ratios 0.3,0.5] [--repeats N] [--json out.json [--resume]]

Both tools get the same zoo model - the torchvision zoo (``compiler.zoo.build``) and the timm zoo
(``compiler.zoo.build_timm``: ``TIMM_ZOO``, the tuning set, and ``TIMM_HOLDOUT``, held out) - with
random weights, randomised BatchNorm, eval mode, a batch-1 input at the zoo's test size (64x64 for most
models, the fixed size of those that have one), and the same recipe: L1-magnitude importance, ranked per coupled group (not globally), the
same ratio for every group, the output head's classes kept.

  fxcompress     ``compiler.compile(model, x, pipeline=[{"name": "prune_channels", "ratio": r}])``;
                 head protected automatically (channels that reach the output are never pruned).
  Torch-Pruning  ``tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                 pruning_ratio=r, ignored_layers=[head], round_to=None)`` then ``pruner.step()``;
                 otherwise its defaults (no num_heads for transformers: what a user hits first). The head
                 is every Conv/Linear reached walking back from the graph output through parameter-free ops.

Every (model, ratio, tool) runs in a fresh subprocess (2 torch threads, address space capped at
--mem-limit-gb, default 6 GB; the largest successful run peaks near 2 GB). Measured there:
  prune s      wall time of the whole pruning call. fxcompress: trace, the eager reference run and
               the pass's numeric verification included. Torch-Pruning: MetaPruner construction
               (its dependency graph trace) and step(). Torch-Pruning prunes in place, so the benchmark
               deep-copies the model first, outside the timed step.
  peak RSS     the process's peak resident set (VmHWM) during the pruning call, reset just before it
               through /proc/self/clear_refs, and its rise over the RSS at the start of the call.
  params/MACs  before and after, counted identically for both tools: ``compiler.trace`` (fx trace +
               shape propagation) of the model, then ``compiler.analysis.count_params`` and ``count_macs``, the sum of
               ``node_macs`` (conv, linear, matmul, multi-head attention; see compiler/analysis.py).
  output ok    the pruned model runs on the example input, its output has the original's shape and
               is finite.
  eager ms     median latency of the original and the pruned model, batch 1, torch eager, 2 threads,
               timed interleaved in the same process (benchmarks/_timing.py).
A run fails when pruning raises, the pruned model does not run, or its output is wrong in shape or
not finite; the first line of the error is recorded. A run *covers* its model when it succeeds and
removes at least 10% of the parameters; the coverage table counts covered models per family.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import resource
import subprocess
import sys
import time
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timing import markdown_table, median_ms  # noqa: E402

import compiler  # noqa: E402
from compiler import zoo  # noqa: E402
from compiler.analysis import count_macs, count_params  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402

INSTALL = ".venv/bin/pip install -c constraints.txt torch-pruning==1.6.1"
TOOLS = ("fxcompress", "torch_pruning")
QUICK = ["torchvision:resnet18", "torchvision:mobilenet_v2", "timm:mobilenetv3_large_100", "timm:cspresnet50"]
COVERED = 0.9  # a run covers its model when it keeps at most this share of the parameters
ZOOS = ("all", "timm", "torchvision")


def zoo_specs(which: str) -> list[str]:
    tv = [f"torchvision:{n}" for n in zoo.ZOO]
    timm = [f"timm:{n}" for n in (*zoo.TIMM_ZOO, *zoo.TIMM_HOLDOUT)]
    return {"all": tv + timm, "timm": timm, "torchvision": tv}[which]


def build(spec: str) -> tuple[nn.Module, torch.Tensor]:
    source, _, name = spec.partition(":")
    return zoo.build_timm(name) if source == "timm" else zoo.build(name)


def family(spec: str) -> str:
    """``timm: ResNet`` from the timm zoo's table; torchvision names by their stem (``resnet``, ``vit``)."""
    source, _, name = spec.partition(":")
    if source == "timm":
        fam, _ = zoo.TIMM_ZOO.get(name) or zoo.TIMM_HOLDOUT[name]
        return f"timm: {fam}"
    return "torchvision: " + re.match(r"[a-z]+(?:_v\d)?", name).group(0).rstrip("_")


def split(spec: str) -> str:
    source, _, name = spec.partition(":")
    return "holdout" if source == "timm" and name in zoo.TIMM_HOLDOUT else "tuning"
WORKER_TIMEOUT_S = 600  # Torch-Pruning 1.6.1 on timm rexnet_100 ran past 27 min at 0.3 without finishing
Result = dict[str, Any]


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def describe(e: BaseException) -> str:
    """The error's first line, its cause's when it wraps one (our PassError does), and where it was raised."""
    cause = e.__cause__
    frames = [f for f in traceback.extract_tb((cause or e).__traceback__) if not f.filename.startswith("<")]
    where = f" [at {Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].name}]" if frames else ""
    return first_line(e) + (f" <- {first_line(cause)}" if cause is not None else "") + where


def cost(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(params, MACs) by our counter, on an fx trace of ``model``."""
    gm = compiler.trace(model, x)
    return count_params(gm), count_macs(gm)


def head_modules(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Conv/Linear layers whose output reaches the model output through parameter-free ops only."""
    gm = compiler.trace(model, x)
    found, seen, todo = [], set(), [n for n in gm.graph.nodes if n.op == "output"]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Linear, nn.modules.conv._ConvNd)):
            found.append(model.get_submodule(n.target))
            continue
        if n.op == "call_module" and any(True for _ in gm.get_submodule(n.target).parameters()):
            continue  # e.g. a LayerNorm before the head: the head lies elsewhere
        todo += [a for a in n.all_input_nodes if isinstance(a, fx.Node)]
    return found or [[m for m in model.modules() if isinstance(m, nn.Linear)][-1]]


def _vm_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if we cannot, then peak is since start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def prune_fxcompress(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    cm = compiler.compile(model, x, pipeline=[{"name": "prune_channels", "ratio": ratio}])
    return cm.graph_module


def prune_torch_pruning(model: nn.Module, x: torch.Tensor, ratio: float, head: list[nn.Module]) -> nn.Module:
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=head, round_to=None)
    pruner.step()
    return model


def run_one(name: str, tool: str, ratio: float, repeats: int) -> Result:
    """One (model, tool, ratio) run; meant for a fresh process (see ``main``)."""
    torch.set_num_threads(2)
    res: Result = {"model": name, "tool": tool, "ratio": ratio, "ok": False, "error": None}
    model, x = build(name)
    with torch.no_grad():
        y0 = model(x)
    res["params_before"], res["macs_before"] = cost(model, x)
    work = copy.deepcopy(model) if tool == "torch_pruning" else model  # TP prunes in place
    head = head_modules(work, x) if tool == "torch_pruning" else []
    gc.collect()
    res["peak_reset"] = reset_peak_rss()
    rss0 = _vm_kb("VmRSS")
    t0 = time.perf_counter()
    try:
        pruned = prune_fxcompress(work, x, ratio) if tool == "fxcompress" else prune_torch_pruning(work, x, ratio, head)
    except Exception as e:  # noqa: BLE001 - any failure of a tool is a result here
        res["error"] = describe(e)
        return res
    finally:
        res["prune_s"] = time.perf_counter() - t0
        peak = _vm_kb("VmHWM")
        res["peak_rss_mb"], res["rss_rise_mb"] = peak / 1024, (peak - rss0) / 1024
    pruned.eval()
    try:
        with torch.no_grad():
            y = pruned(x)
    except Exception as e:  # noqa: BLE001
        res["error"] = "pruned model does not run: " + describe(e)
        return res
    if y.shape != y0.shape or not torch.isfinite(y).all():
        res["error"] = f"bad output: shape {tuple(y.shape)} (want {tuple(y0.shape)}), finite {bool(torch.isfinite(y).all())}"
        return res
    try:
        res["params_after"], res["macs_after"] = cost(pruned, x)
    except Exception as e:  # noqa: BLE001 - keep the run, say why the count is missing
        res["params_after"], res["macs_after"] = count_params(pruned), None
        res["error"] = "MACs not counted: " + describe(e)
    if res["params_after"] >= res["params_before"]:
        res["error"] = "nothing pruned"
    res["ok"] = True
    res["median_ms"] = median_ms({"original": lambda: model(x), "pruned": lambda: pruned(x)}, repeats=repeats)
    res["repeats"] = repeats
    return res


def spawn(name: str, tool: str, ratio: float, repeats: int, mem_limit_gb: float) -> Result:
    """Run ``run_one`` in a fresh interpreter, so its peak RSS is its own; a crash is a result too.

    The worker's address space is capped: uncapped, Torch-Pruning on swin_t grew past 23 GB and
    the kernel's OOM killer fired on a shared machine. Over the cap, allocation fails in the worker.
    """
    cmd = [sys.executable, __file__, "--worker", f"{name}:{tool}:{ratio}", "--repeats", str(repeats)]
    base: Result = {"model": name, "tool": tool, "ratio": ratio, "ok": False}
    cap = int(mem_limit_gb * 2**30)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {WORKER_TIMEOUT_S} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {**base, "error": f"worker exited {p.returncode}: {tail}"}
    return json.loads(lines[-1])


def _m(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}"


def row(r: Result) -> list[str]:
    ok = "yes" if r["ok"] else "**no**"
    if not r["ok"]:
        return [r["model"], str(r["ratio"]), r["tool"], ok, f"{r.get('prune_s', 0):.1f}" if "prune_s" in r else "-",
                f"{r['peak_rss_mb']:.0f} (+{r['rss_rise_mb']:.0f})" if "peak_rss_mb" in r else "-",
                "-", "-", "-", r["error"].replace("|", "/")]
    ms = r["median_ms"]
    pct = lambda a, b: f"{_m(a)} ({100 * a / b:.0f}%)" if a is not None else "-"  # noqa: E731
    return [r["model"], str(r["ratio"]), r["tool"], ok, f"{r['prune_s']:.1f}",
            f"{r['peak_rss_mb']:.0f} (+{r['rss_rise_mb']:.0f})",
            f"{_m(r['params_before'])} -> {pct(r['params_after'], r['params_before'])}",
            f"{_m(r['macs_before'])} -> {pct(r['macs_after'], r['macs_before'])}",
            f"{ms['original']:.1f} -> {ms['pruned']:.1f} ({ms['original'] / ms['pruned']:.2f}x)",
            (r["error"] or "").replace("|", "/")]


HEAD = ["model", "ratio", "tool", "ok", "prune s", "peak RSS MB (rise)", "params M (after, % kept)",
        "MACs M (after, % kept)", "eager ms orig -> pruned (speed-up)", "note"]


def summary(results: list[Result], ratios: list[float]) -> str:
    rows = []
    for tool in TOOLS:
        cells = []
        for r in ratios:
            runs = [x for x in results if x["tool"] == tool and x["ratio"] == r]
            cells.append(f"{sum(x['ok'] for x in runs)}/{len(runs)}")
        failed = sorted({x["model"] for x in results if x["tool"] == tool and not x["ok"]})
        rows.append([tool, *cells, ", ".join(failed) or "-"])
    return markdown_table(["tool", *(f"ok at {r}" for r in ratios), "failed on"], rows)


def covered(r: Result) -> bool:
    return bool(r["ok"]) and r.get("params_after") is not None and r["params_after"] <= COVERED * r["params_before"]


def coverage(results: list[Result], ratios: list[float]) -> str:
    """Covered models per family, per ratio, per tool; then per split (tuning / holdout) and overall."""
    groups: dict[str, list[str]] = {}
    for r in results:
        groups.setdefault(family(r["model"]), [])
        if r["model"] not in groups[family(r["model"])]:
            groups[family(r["model"])].append(r["model"])
    groups = dict(sorted(groups.items()))
    for name in ("tuning", "holdout"):
        members = sorted({r["model"] for r in results if split(r["model"]) == name})
        if members and name == "holdout":
            groups["timm held-out models"] = members
    groups["overall"] = sorted({r["model"] for r in results})

    def cell(models: list[str], tool: str, ratio: float) -> str:
        runs = [r for r in results if r["model"] in models and r["tool"] == tool and r["ratio"] == ratio]
        return f"{sum(map(covered, runs))}/{len(runs)}"

    head = ["family", "models"] + [f"{t} @{r}" for r in ratios for t in ("ours", "Torch-Pruning")]
    rows = [[g, str(len(ms))] + [cell(ms, t, r) for r in ratios for t in TOOLS] for g, ms in groups.items()]
    return markdown_table(head, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", choices=ZOOS, default="all", help="which zoo (default all: torchvision and timm)")
    ap.add_argument("--models", help="comma-separated models as timm:NAME or torchvision:NAME (default: the --zoo)")
    ap.add_argument("--ratios", default="0.3,0.5", help="comma-separated pruning ratios (default 0.3,0.5)")
    ap.add_argument("--repeats", type=int, default=None, help="latency repeats (default 20, 5 with --quick)")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--json", help="write raw results here (atomically, after every run)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in --json and run only the missing (model, ratio, tool) ones")
    ap.add_argument("--mem-limit-gb", type=float, default=6.0, help="address-space cap per run (default 6)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: model:tool:ratio, run in this process
    args = ap.parse_args()
    repeats = args.repeats or (5 if args.quick else 20)
    if args.worker:
        name, tool, ratio = args.worker.rsplit(":", 2)
        print(json.dumps(run_one(name, tool, float(ratio), repeats)))
        return

    try:
        import torch_pruning  # noqa: F401
    except ImportError as e:
        sys.exit(f"this benchmark needs Torch-Pruning 1.6.1 ({e}); install it bench-only, under the repo's pins:\n"
                 f"    {INSTALL}")
    tp_version = version("torch-pruning")  # the 1.6.1 wheel's torch_pruning.__version__ says 1.6.0
    if tp_version != "1.6.1":
        print(f"warning: Torch-Pruning {tp_version}, the figures are for 1.6.1", file=sys.stderr)
    models = args.models.split(",") if args.models else QUICK if args.quick else zoo_specs(args.zoo)
    unknown = [m for m in models if m not in zoo_specs("all")]
    if unknown:
        sys.exit(f"unknown zoo models {unknown}; give them as timm:NAME (TIMM_ZOO, TIMM_HOLDOUT) or "
                 f"torchvision:NAME ({sorted(zoo.ZOO)})")
    ratios = [float(r) for r in args.ratios.split(",")]

    results: list[Result] = []
    if args.resume:
        if not args.json:
            sys.exit("--resume continues the runs in --json FILE; give --json")
        try:
            results = [r for r in json.loads(Path(args.json).read_text()) if r["model"] in models and r["ratio"] in ratios]
        except FileNotFoundError:
            results = []
    done = {(r["model"], r["ratio"], r["tool"]) for r in results}
    t0 = time.perf_counter()
    for name in (bar := tqdm(models, desc="models", unit="model")):
        for ratio in ratios:
            for tool in TOOLS:  # interleaved, so machine drift hits both tools alike
                if (name, ratio, tool) in done:
                    continue
                bar.set_postfix_str(f"{name} {ratio} {tool}")
                results.append(r := spawn(name, tool, ratio, repeats, args.mem_limit_gb))
                if not r["ok"]:
                    tqdm.write(f"{name} {ratio} {tool}: FAILED {r['error']}", file=sys.stderr)
                if args.json:
                    write_text_atomic(args.json, json.dumps(results, indent=2))
    print(markdown_table(HEAD, [row(r) for r in results]))
    print()
    print(summary(results, ratios))
    print()
    print(f"Coverage: models whose run succeeded and removed at least {100 * (1 - COVERED):.0f}% of the parameters")
    print(coverage(results, ratios))
    print(f"\n{len(results)} runs, {time.perf_counter() - t0:.0f} s wall, {repeats} latency repeats, "
          f"Torch-Pruning {tp_version}, torch {torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
