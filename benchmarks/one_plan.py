"""One hand-made plan on a trained Fashion-MNIST reference: prune, factorize, fine-tune, measure.

    .venv/bin/python benchmarks/one_plan.py --model dsnet --prune '{"6": 0.5, "13": 0.5}' \\
        [--factorize '{"20": 16}' --method svd] [--importance l1,taylor] [--epochs 3]

For checking what a plan is worth against what the budget pass chose: the reference is trained
(or loaded from ~/.cache/fxcompress/bench, as ``recover_unseen.py`` leaves it), BatchNorms folded,
the groups of ``--prune`` (module path -> ratio, channel counts in multiples of 8) pruned by each
``--importance`` (``taylor`` on 8 shuffled training batches), the layers of ``--factorize`` (module
path -> rank) factorized by ``--method``, the result fine-tuned with ``FineTune(epochs=--epochs)``
(the defaults) on the training split with the validation split for early stopping. Prints params,
the OpenCL speed-up at batch 256 against the original compiled by the default pipeline (least block
median of 4 rounds, in turns) and test accuracy before and after.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_block_ms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import compiler  # noqa: E402
from compiler.analysis import count_params  # noqa: E402
from compiler.data import fashion_mnist_loaders  # noqa: E402
from compiler.finetune import FineTune  # noqa: E402
from fashion_mnist import REFERENCES, evaluate, reference  # noqa: E402
from passes.prune_channels import PruneChannels  # noqa: E402

CACHE = Path.home() / ".cache" / "fxcompress" / "bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(REFERENCES), required=True)
    ap.add_argument("--prune", type=json.loads, default={}, help="JSON: module path -> pruning ratio of its group")
    ap.add_argument("--factorize", type=json.loads, default={}, help="JSON: module path -> rank")
    ap.add_argument("--method", default="svd", help="factorization method (default svd)")
    ap.add_argument("--importance", default="l1", help="comma-separated pruning importances to compare (default l1)")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    data = fashion_mnist_loaders(batch_size=128)
    model = reference(args.model, data.train.dataset, cache=CACHE)
    x = next(iter(DataLoader(data.train.dataset, batch_size=256)))[0]
    acc0 = evaluate(model, data.test)[1]
    base = compiler.compile(model, (x,), target="opencl")
    shuffled = DataLoader(data.train.dataset, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(1))
    taylor_data = [b for _, b in zip(range(8), shuffled)]
    for importance in args.importance.split(","):
        torch.manual_seed(0)
        pipeline: list = ["cleanup", "fold_bn"]
        if args.prune:
            pipeline.append(PruneChannels(ratio=0.0, overrides=args.prune, round_to=8, importance=importance,
                                          data=taylor_data if importance == "taylor" else None))
        if args.factorize:
            pipeline.append({"name": "factorize", "method": args.method, "overrides": {**args.factorize, "*": "skip"}})
        t0 = time.perf_counter()
        cm = compiler.compile(model, (x,), pipeline=pipeline + ["fuse"], target="opencl",
                              finetune=FineTune(epochs=args.epochs, progress=False), train_data=data.train,
                              val_data=data.val, verify=False)
        acc = evaluate(cm.graph_module, data.test)[1]
        with torch.no_grad():
            ms = best_block_ms({"original": lambda: base(x), "plan": lambda: cm(x)}, rounds=4, per_block=5)
        p0, p1 = count_params(model), count_params(cm.graph_module)
        print(f"{args.model} prune {args.prune} factorize {args.factorize or '-'} ({args.method}) importance {importance}: "
              f"params {p0:,} -> {p1:,} ({p0 / p1:.2f}x), OpenCL b256 {ms['original']:.1f} -> {ms['plan']:.1f} ms "
              f"({ms['original'] / ms['plan']:.2f}x), test acc {100 * acc0:.2f} -> {100 * acc:.2f} "
              f"({100 * (acc - acc0):+.2f}) [{time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
