"""Fine-tuning settings, measured: which learning rate, warm-up and distillation weight recover a
compressed network best, on more than one architecture.

    .venv/bin/python benchmarks/finetune_defaults.py [--models small_cnn,vgg5] [--epochs 3]
                     [--settings default,lr=3e-3,...] [--json out.json]

Per model: the trained reference (``examples/fashion_mnist.py``: ``trained``, 3 epochs, cached under
~/.cache/fxcompress/bench), compressed once by a fixed pipeline (``fold_bn``, ``prune_channels`` at
0.5: about 4x fewer parameters, the cut the budget benchmarks ask for), then fine-tuned from those
same compressed weights with each setting, ``--epochs`` epochs over the training split (5,000
images held out for validation, which drives the best-epoch restore). Reported: test accuracy
after, its change from the original, the validation accuracy after each epoch (is 3 enough?) and
the seconds taken. ``small_cnn`` is the network the defaults were first set on; ``vgg5`` was not
used to set anything before this benchmark.

Settings (each a "+"-joined list of changes from ``FineTune()``, ``CHANGES``): by default the rows
of ``FineTune``'s docstring table, which this benchmark measured (about 40 minutes for both
models): the defaults; the former distillation weight and temperature (alpha 0.9, T 4), each alone;
plain (``alpha=0``: cross-entropy on the labels only, no teacher); around the former defaults, lr
1e-3 and 1e-2, ``renormalize`` off (the folded student trains without BatchNorms) and a 5% warm-up;
BatchNorms kept (pruned before ``fold_bn``, folded after the fine-tune).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import compiler  # noqa: E402
from compiler.analysis import count_params  # noqa: E402
from compiler.data import fashion_mnist_loaders  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402
from compiler.finetune import FineTune, finetune  # noqa: E402
from fashion_mnist import REFERENCES, evaluate, reference, reference_names  # noqa: E402

CACHE = Path.home() / ".cache" / "fxcompress" / "bench"
MODELS = REFERENCES
# a setting is "+"-joined changes from FineTune() (the default): "lr=3e-3+warmup=0.05"
CHANGES = {
    "default": {},
    "lr=1e-3": {"lr": 1e-3},
    "lr=3e-4": {"lr": 3e-4},
    "lr=3e-3": {"lr": 3e-3},
    "lr=1e-2": {"lr": 1e-2},
    "warmup=0.05": {"warmup": 0.05},
    "alpha=0.5": {"alpha": 0.5},
    "alpha=0.9": {"alpha": 0.9},
    "T=4": {"temperature": 4.0},
    "plain": {"alpha": 0.0},  # cross-entropy on the labels only, no teacher
    "T=2": {"temperature": 2.0},
    "sgd": {"optimizer": "sgd", "lr": 1e-2},
    "renorm off": {"renormalize": False},  # the folded student trains without BatchNorms
    "bn kept": {"keep_bn": True},  # pruned with its BatchNorms, folded after the fine-tune
}
# the rows of FineTune's docstring table (the former defaults were alpha 0.9, T 4)
DEFAULT_SETTINGS = ("default,alpha=0.9+T=4,alpha=0.9,T=4,plain,alpha=0.9+T=4+lr=1e-3,alpha=0.9+T=4+lr=1e-2,"
                    "alpha=0.9+T=4+renorm off,alpha=0.9+T=4+warmup=0.05,alpha=0.9+T=4+bn kept")


def setting(label: str) -> dict:
    out = {}
    for part in label.split("+"):
        out.update(CHANGES[part])
    return out


PRUNE = {"name": "prune_channels", "ratio": 0.5}


def run(name: str, loaders, settings: list[str], epochs: int) -> list[dict]:
    model = reference(name, loaders.train.dataset, cache=CACHE)
    acc0 = evaluate(model, loaders.test)[1]
    x = next(iter(loaders.val))[0]
    # folded before pruning, as the default pipeline does; or pruned with its BatchNorms, fine-tuned
    # with them in training mode, and folded after
    compressed = {keep: compiler.compile(model, (x,), pipeline=["cleanup", PRUNE] if keep else ["cleanup", "fold_bn", PRUNE]
                                         ).graph_module for keep in (False, True)}
    acc_c = evaluate(compressed[False], loaders.test)[1]
    out = []
    for label in settings:
        change = setting(label)
        student = copy.deepcopy(compressed[change.pop("keep_bn", False)])
        config = replace(FineTune(epochs=epochs, progress=False, patience=epochs), **change)
        t0 = time.perf_counter()
        r = finetune(student, model, loaders.train, loaders.val, config=config)
        seconds = time.perf_counter() - t0
        acc = evaluate(student, loaders.test)[1]
        out.append({"model": name, "setting": label, "params_before": count_params(model),
                    "params_after": count_params(student), "acc_original": acc0, "acc_compressed": acc_c,
                    "acc_after": acc, "val_acc_per_epoch": [h.val_acc for h in r.history], "best_epoch": r.best_epoch,
                    "seconds": seconds})
        print(f"{name} {label}: test {100 * acc:.2f}% ({100 * (acc - acc0):+.2f} pt), {seconds:.0f} s", file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=lambda t: reference_names(t, MODELS), default="small_cnn,vgg5")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"comma-separated; each a '+'-joined list of {list(CHANGES)}")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names, settings = args.models, args.settings.split(",")
    if bad := [p for s in settings for p in s.split("+") if p not in CHANGES]:
        ap.error(f"unknown setting changes {bad}; valid choices: {list(CHANGES)} joined by '+'")
    loaders = fashion_mnist_loaders(batch_size=128)
    results = [r for n in names for r in run(n, loaders, settings, args.epochs)]
    rows = []
    for r in results:
        best = max(q["acc_after"] for q in results if q["model"] == r["model"])
        rows.append([r["model"], r["setting"], f"{r['params_before'] / r['params_after']:.2f}x",
                     f"{100 * r['acc_original']:.2f}", f"{100 * r['acc_compressed']:.2f}", f"{100 * r['acc_after']:.2f}",
                     f"{100 * (r['acc_after'] - r['acc_original']):+.2f}", f"{100 * (r['acc_after'] - best):+.2f}",
                     " / ".join(f"{100 * v:.2f}" for v in r["val_acc_per_epoch"]), f"{r['seconds']:.0f}"])
    print(markdown_table(["model", "setting", "fewer params", "original %", "compressed %", "after %", "points",
                          "vs best", "val % per epoch", "s"], rows))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
