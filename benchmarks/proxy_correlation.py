"""Which score of a compressed candidate predicts its accuracy after fine-tuning: the rank correlation
of each proxy the budget pass can use with the test accuracy reached after recovery, over random plans.

    .venv/bin/python benchmarks/proxy_correlation.py [--models small_cnn,vgg5] [--plans 12] [--epochs 1]
                     [--json out.json]

Per model: the trained reference (``examples/fashion_mnist.py``, cached), BatchNorm folded, and
``--plans`` random plans (seeded): each channel group pruned by 0, 25, 50 or 75%, each conv and linear
except the stem and the head kept or factorized (Tucker-2 / SVD) at rank 0.5 or 0.25, stacking
allowed (a layer both pruned and factorized), redrawn until the plan keeps between 1/6 and 1/3 of the
parameters, so the plans compare at a similar size. For each, before any training:

  rel_err     the data-free proxy: max |y - y_ref| / max |y_ref| of the logits on 256 training images
  kl          mean KL(original || candidate) of the class distributions on 1,024 training images
              (``compiler.calibration``: the score the budget pass uses with data)
  1-agree     the share of those images whose top-1 class differs from the original's
  probe kl    kl after a probe fine-tune (50 batches of distillation, as the budget pass's probes)

then the plan is fine-tuned (``FineTune(epochs=--epochs)``, the defaults) and its test accuracy
taken. Printed: per model, Spearman's rho of each proxy with the accuracy after fine-tuning (a good
proxy is strongly negative: more damage, less accuracy) and the per-plan table.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import markdown_table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import compiler  # noqa: E402
from compiler.analysis import count_params  # noqa: E402
from compiler.budget import Plan  # noqa: E402
from compiler.calibration import Calibration  # noqa: E402
from compiler.data import fashion_mnist_loaders  # noqa: E402
from compiler.fileio import write_text_atomic  # noqa: E402
from compiler.finetune import FineTune, finetune  # noqa: E402
from compiler.instruments import output_error  # noqa: E402
from fashion_mnist import REFERENCES, evaluate, reference, reference_names  # noqa: E402
from passes.prune_channels import PruneChannels  # noqa: E402
from passes.pruning.depgraph import analyse  # noqa: E402

CACHE = Path.home() / ".cache" / "fxcompress" / "bench"
MODELS = REFERENCES
PROXIES = ("rel_err", "kl", "1-agree", "probe kl")


def random_plan(gm, rng: random.Random) -> Plan:
    groups = [g["layers"][0] for g in PruneChannels(ratio=0.75, round_to=8).plan(gm, analyse(gm))["groups"]]
    layers = [p for p, m in gm.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][1:-1]  # not stem, head
    prune = {g: r for g in groups if (r := rng.choice((0, 0.25, 0.5, 0.75)))}
    plan = {}
    for p in layers:
        m = gm.get_submodule(p)
        rank = rng.choice((None, 0.5, 0.25))
        if rank is not None and not (isinstance(m, nn.Conv2d) and m.groups > 1):
            method = "tucker2" if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) else "svd"
            plan[p] = {"method": method, "rank": rank}
    return Plan(layers=plan, prune=prune)


def run(name: str, loaders, n_plans: int, epochs: int) -> dict:
    model = reference(name, loaders.train.dataset, cache=CACHE)
    acc0 = evaluate(model, loaders.test)[1]
    x = torch.cat([b[0] for b, _ in zip(loaders.train, range(2))])[:256]
    folded = compiler.compile(model, (x,), pipeline=["cleanup", "fold_bn"]).graph_module
    p0 = count_params(folded)
    cal = Calibration.from_batches(model, loaders.train)
    with torch.no_grad():
        ref = model(x)
    rng, rows, draws = random.Random(0), [], 0
    while len(rows) < n_plans and draws < 50 * n_plans:
        draws += 1
        plan = random_plan(folded, rng)
        try:
            gm = compiler.compile(folded, (x,), pipeline=plan.pipeline(), verify=False).graph_module
        except compiler.CompilerError:
            continue
        if not p0 / 6 <= count_params(gm) <= p0 / 3:
            continue
        with torch.no_grad():
            score = {"rel_err": output_error(ref, gm(x))[1]}
        m = cal.metrics(gm)
        score.update({"kl": m["kl"], "1-agree": 1 - m["agreement"]})
        probe = compiler.compile(folded, (x,), pipeline=plan.pipeline(), verify=False).graph_module
        finetune(probe, model, loaders.train, None, config=FineTune(epochs=1, batches=50, progress=False))
        score["probe kl"] = cal.error(probe)
        finetune(gm, model, loaders.train, loaders.val, config=FineTune(epochs=epochs, progress=False))
        acc = evaluate(gm, loaders.test)[1]
        rows.append({"plan": len(rows) + 1, "params_ratio": p0 / count_params(gm), **score, "acc_after": acc})
        print(f"{name} plan {len(rows)}: {p0 / count_params(gm):.2f}x, "
              + ", ".join(f"{k} {v:.4g}" for k, v in score.items()) + f", after fine-tuning {100 * acc:.2f}%",
              file=sys.stderr)
    rho = {k: float(spearmanr([r[k] for r in rows], [r["acc_after"] for r in rows]).statistic) for k in PROXIES}
    return {"model": name, "acc_original": acc0, "epochs": epochs, "plans": rows, "spearman": rho}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=lambda t: reference_names(t, MODELS), default="small_cnn,vgg5")
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = args.models
    loaders = fashion_mnist_loaders(batch_size=128)
    results = [run(n, loaders, args.plans, args.epochs) for n in names]
    print(markdown_table(["model", "plans", "fine-tune epochs", *(f"rho({k}, acc)" for k in PROXIES)],
                         [[r["model"], str(len(r["plans"])), str(r["epochs"]), *(f"{r['spearman'][k]:+.2f}" for k in PROXIES)]
                          for r in results]))
    for r in results:
        print()
        print(markdown_table(["model", "plan", "fewer params", *PROXIES, "test acc after %"],
                             [[r["model"], str(p["plan"]), f"{p['params_ratio']:.2f}x", *(f"{p[k]:.4g}" for k in PROXIES),
                               f"{100 * p['acc_after']:.2f}"] for p in r["plans"]]))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
