"""The ``fxcompress`` command line.

    fxcompress compile path/to/model.py:factory --input-shape 1,3,224,224 [--pipeline p.toml]
    fxcompress compile timm:mobilenetv2_100 --input-shape 1,3,224,224 [--weights state_dict.pt]
                       [--target torch|onnx|opencl] [-o out.onnx] [--report report.html|report.json]
                       [--finetune-data fashion-mnist [--epochs 3] [--lr 3e-3] [--train-limit N] ...]
    fxcompress passes
    fxcompress calibrate [--per-family 60] [--networks 24] [-o profile.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import logging
import sys
from pathlib import Path

import torch
from torch import nn

from .data import DATASETS, load_dataset
from .errors import CompilerError, InputError
from .finetune import OPTIMIZERS, FineTune


ZOOS = ("timm", "torchvision")


def _load_model(spec: str, weights: str | None) -> nn.Module:
    """``timm:NAME`` / ``torchvision:NAME`` (random weights) or ``file.py:factory``; then ``--weights``."""
    zoo_name, sep, name = spec.partition(":")
    model = _zoo_model(zoo_name, name) if sep and zoo_name in ZOOS else _load_factory(spec)
    if weights is not None:
        _load_weights(model, weights)
    return model.eval()


def _zoo_model(zoo_name: str, name: str) -> nn.Module:
    from . import zoo

    if zoo_name == "timm":
        timm = zoo.import_timm()
        known = timm.list_models()
        if name not in known:
            close = [k for k in known if name.lower() in k][:8]
            raise InputError(f"timm has no model '{name}'" + (f"; similar: {close}" if close else f"; it has {len(known)}, see timm.list_models()"))
        return timm.create_model(name, pretrained=False)
    models = zoo.import_torchvision().models
    known = models.list_models(module=models)
    if name not in known:
        raise InputError(f"torchvision has no classification model '{name}'; valid: {known}")
    return models.get_model(name, weights=None)


def _load_weights(model: nn.Module, path: str) -> None:
    """Load a ``state_dict`` with ``weights_only=True``: a weights file is data, never code."""
    if not Path(path).is_file():
        raise InputError(f"--weights file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickles with code, truncated files: all refused the same way
        raise InputError(f"--weights '{path}' is not a state_dict torch.load(weights_only=True) accepts: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"--weights '{path}' holds a {type(state).__name__}, not a state_dict")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(f"--weights '{path}' does not fit the model: missing keys {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")


def _load_factory(spec: str) -> nn.Module:
    """Import ``file.py:factory`` and call ``factory()``. The model file is the user's code, run as such."""
    file, sep, name = spec.rpartition(":")
    if not sep or not file or not name:
        raise InputError(f"model must be given as PATH/TO/file.py:factory, timm:NAME or torchvision:NAME, got '{spec}'")
    path = Path(file)
    if not path.is_file():
        raise InputError(f"model file '{path}' does not exist")
    mod_spec = importlib.util.spec_from_file_location(f"_fxcompress_user_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        mod_spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    factory = getattr(module, name, None)
    if not callable(factory):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise InputError(f"'{path}' has no callable '{name}'; callables defined there: {found}")
    return factory()


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must be comma-separated integers like 1,3,224,224, got '{text}'") from None
    if not dims or any(d <= 0 for d in dims):
        raise argparse.ArgumentTypeError(f"input shape dimensions must be positive, got '{text}'")
    return dims


def _cmd_compile(args) -> int:
    from . import compile as compile_model

    model = _load_model(args.model, args.weights)
    gen = torch.Generator().manual_seed(args.seed)
    inputs = tuple(torch.randn(s, generator=gen) for s in args.input_shape)
    pipeline = args.pipeline or "default"
    if args.output:  # fail on an unwritable path before the work, not after
        from .fileio import check_writable_dir

        check_writable_dir(args.output)
    ft, loaders = _finetune_request(args)
    cm = compile_model(model, inputs, pipeline=pipeline, target=args.target, dump_dir=args.dump_dir, finetune=ft,
                       train_data=loaders.train if loaders else None, val_data=loaders.val if loaders else None)
    if args.output:
        cm.export_onnx(args.output, dynamic_batch=args.dynamic_batch)
    print(cm.report)
    if loaders is not None:
        _print_finetune(cm.report.finetune, model, cm, loaders.test)
    if args.report:
        if str(args.report).lower().endswith((".html", ".htm")):
            cm.report.save_html(args.report)
        else:
            cm.report.save(args.report)
        print(f"report written to {args.report}")
    return 0


_FINETUNE_OPTIONS = ("epochs", "lr", "optimizer", "alpha", "temperature")


def _finetune_request(args):
    """``FineTune`` and the data loaders from ``--finetune-data`` and its options, or ``(None, None)``."""
    given = [f"--{k.replace('_', '-')}" for k in (*_FINETUNE_OPTIONS, "batch_size", "train_limit")
             if getattr(args, k) is not None]
    if args.finetune_data is None:
        if given:
            raise InputError(f"{', '.join(given)} only apply with --finetune-data")
        return None, None
    config = FineTune(progress=not args.no_progress, seed=args.seed,
                      **{k: getattr(args, k) for k in _FINETUNE_OPTIONS if getattr(args, k) is not None})
    n = args.train_limit or 60000
    loaders = load_dataset(args.finetune_data, batch_size=args.batch_size or 128, train_limit=args.train_limit,
                           val_size=min(5000, n // 10), seed=args.seed)
    return config, loaders


def _print_finetune(result: dict, original: nn.Module, cm, test_loader) -> None:
    print("\nfine-tuning (distillation from the original model)")
    print("  epoch  train loss  train acc  val loss  val acc  seconds")
    for h in result["history"]:
        val = f"{h['val_loss']:8.4f}  {h['val_acc']:7.4f}" if h["val_loss"] is not None else f"{'-':>8}  {'-':>7}"
        print(f"  {h['epoch']:5d}  {h['train_loss']:10.4f}  {h['train_acc']:9.4f}  {val}  {h['seconds']:7.1f}")
    kept = f"epoch {result['best_epoch']}" + (" (stopped early)" if result["stopped_early"] else "")
    accuracy = [_accuracy(m, test_loader) for m in (original, cm)]
    print(f"  kept {kept}; test accuracy: original {accuracy[0]:.4f}, compiled {accuracy[1]:.4f}")


@torch.no_grad()
def _accuracy(model, loader) -> float:
    if isinstance(model, nn.Module):
        model.eval()
    hits = seen = 0
    for x, y in loader:
        hits += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    return hits / max(seen, 1)


def _cmd_passes(args) -> int:
    from .pass_base import registered_passes

    for name, cls in registered_passes().items():
        doc = (inspect.getdoc(cls) or "").splitlines()[0]
        print(f"{name}: {doc}")
        for arg, p in cls.arguments().items():
            default = "" if p.default is p.empty else f" = {p.default!r}"
            ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            print(f"    {arg}: {ann}{default}")
    return 0


def _cmd_calibrate(args) -> int:
    from .cost.calibrate import calibrate, default_profile_path

    profile = calibrate(per_family=args.per_family, networks=args.networks, progress=not args.no_progress)
    path = profile.save(args.output or default_profile_path(profile.device))
    print(f"calibration profile for '{profile.device}' ({len(profile.samples)} layers, {len(profile.networks)} networks) written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fxcompress", description="Compress and compile PyTorch models over torch.fx graphs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the passes do")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="trace a model, run a pass pipeline, report, export")
    c.add_argument("model", help="PATH/TO/file.py:factory (factory() returns an nn.Module), or timm:NAME / torchvision:NAME")
    c.add_argument("--weights", help="a state_dict file to load into the model (torch.load with weights_only=True)")
    c.add_argument("--input-shape", type=_shape, action="append", required=True,
                   help="shape of one example input, e.g. 1,3,224,224 (repeat for several inputs)")
    c.add_argument("--pipeline", help="a named pipeline ('default') or a TOML pipeline file")
    c.add_argument("--target", default="torch", help="torch | onnx | opencl (default: torch)")
    c.add_argument("-o", "--output", help="export the compiled graph to this ONNX file")
    c.add_argument("--dynamic-batch", action="store_true", help="make the ONNX batch dimension dynamic")
    c.add_argument("--report", help="write the compile report here: a self-contained HTML page if the name ends in "
                                    ".html, else JSON")
    c.add_argument("--dump-dir", help="write the graph after every pass to this directory")
    c.add_argument("--seed", type=int, default=0, help="seed of the random example inputs (and of fine-tuning's shuffling)")
    f = c.add_argument_group("fine-tuning", "distil the original model into the compressed one after the passes")
    f.add_argument("--finetune-data", choices=DATASETS, help="fine-tune on this data set (installed, never downloaded)")
    f.add_argument("--epochs", type=int, help="fine-tuning epochs (default 3)")
    f.add_argument("--lr", type=float, help="peak learning rate of the cosine schedule (default 3e-3)")
    f.add_argument("--optimizer", choices=OPTIMIZERS, help="default adamw")
    f.add_argument("--alpha", type=float, help="weight of the teacher's soft targets; the rest is label cross-entropy (default 0.5)")
    f.add_argument("--temperature", type=float, help="distillation temperature (default 2)")
    f.add_argument("--batch-size", type=int, help="global training batch (default 128)")
    f.add_argument("--train-limit", type=int, help="use only the first N training images (a tenth of them for validation)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_compile)

    p = sub.add_parser("passes", help="list the registered passes and their arguments")
    p.set_defaults(func=_cmd_passes)

    k = sub.add_parser("calibrate", help="measure the OpenCL kernels at sampled shapes: the cost model's profile")
    k.add_argument("--per-family", type=int, default=60, help="sampled layers per kernel family (default 60)")
    k.add_argument("--networks", type=int, default=24, help="random whole networks timed end to end (default 24)")
    k.add_argument("-o", "--output", help="profile path (default: this device's, under the user cache)")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")
    k.set_defaults(func=_cmd_calibrate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CompilerError as e:
        print(f"fxcompress: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
