"""Compress a small Fashion-MNIST CNN, then recover its accuracy by distillation from the original.

    .venv/bin/python examples/finetune_fashion_mnist.py                       # prune half the channels
    .venv/bin/python examples/finetune_fashion_mnist.py --method tucker2      # Tucker-2 at rank 0.5
    .venv/bin/python examples/finetune_fashion_mnist.py --train-limit 10000   # a quicker, rougher run

Trains ``small_cnn`` (or loads it from ``--checkpoint`` when that file exists), compiles it with a
compression pipeline, and compiles it again with ``finetune=FineTune(...)``: the same passes, then
knowledge distillation with the original model as teacher. Prints test accuracy before and after.
Needs the Debian package ``dataset-fashion-mnist``; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import compiler
from compiler.data import fashion_mnist_loaders
from compiler.finetune import FineTune
from fashion_mnist import evaluate, small_cnn, train

PIPELINES = {
    "prune": ["cleanup", "fold_bn", {"name": "prune_channels", "ratio": 0.5}, "fuse"],
    # the stem and the head are left alone (factorize's skip_first/skip_last): the two inner convs change
    "tucker2": ["cleanup", "fold_bn", {"name": "factorize", "method": "tucker2", "rank": 0.5}, "fuse"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", choices=sorted(PIPELINES), default="prune")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of the original model")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--checkpoint", type=Path, default=None, help="load the trained model from here, or save it here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = fashion_mnist_loaders(batch_size=128, val_size=5000 if not args.train_limit else args.train_limit // 10,
                                 train_limit=args.train_limit)
    model = small_cnn()
    if args.checkpoint and args.checkpoint.is_file():
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True))
        print(f"loaded {args.checkpoint}")
    else:
        t0 = time.perf_counter()
        train(model, data.train, epochs=args.epochs, progress=not args.no_progress)
        print(f"trained small_cnn ({sum(p.numel() for p in model.parameters()):,} parameters) "
              f"for {args.epochs} epochs in {time.perf_counter() - t0:.0f} s")
        if args.checkpoint:
            torch.save(model.state_dict(), args.checkpoint)
    model.eval()
    x = torch.randn(1, 1, 28, 28)

    compressed = compiler.compile(model, x, pipeline=PIPELINES[args.method])
    t0 = time.perf_counter()
    tuned = compiler.compile(model, x, pipeline=PIPELINES[args.method], train_data=data.train, val_data=data.val,
                             finetune=FineTune(epochs=args.finetune_epochs, lr=2e-3, progress=not args.no_progress))
    seconds = time.perf_counter() - t0
    print(tuned.report)
    for h in tuned.report.finetune["history"]:
        print(f"  fine-tune epoch {h['epoch']}: train loss {h['train_loss']:.4f}, "
              f"val loss {h['val_loss']:.4f}, val acc {h['val_acc']:.4f} ({h['seconds']:.0f} s)")

    params = [sum(p.numel() for p in m.parameters()) for m in (model, tuned.graph_module)]
    print(f"\n{args.method}: {params[0]:,} -> {params[1]:,} parameters; compile + fine-tune {seconds:.0f} s")
    print(f"{'model':<24} {'test loss':>9} {'test acc':>9}")
    for name, m in (("original", model), ("compressed", compressed), ("compressed + fine-tuned", tuned)):
        loss, acc = evaluate(m, data.test)
        print(f"{name:<24} {loss:9.4f} {acc:9.4f}")


if __name__ == "__main__":
    main()
