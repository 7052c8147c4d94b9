"""The ``fxcompress`` command line.

    fxcompress compile path/to/model.py:factory --input-shape 1,3,224,224 [--pipeline p.toml]
                       [--target torch|onnx|opencl] [-o out.onnx] [--report report.json]
    fxcompress passes
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

from .errors import CompilerError, InputError


def _load_factory(spec: str) -> nn.Module:
    """Import ``file.py:factory`` and call ``factory()``. The model file is the user's code, run as such."""
    file, sep, name = spec.rpartition(":")
    if not sep or not file or not name:
        raise InputError(f"model must be given as PATH/TO/file.py:factory, got '{spec}'")
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

    model = _load_factory(args.model)
    gen = torch.Generator().manual_seed(args.seed)
    inputs = tuple(torch.randn(s, generator=gen) for s in args.input_shape)
    pipeline = args.pipeline or "default"
    if args.output:  # fail on an unwritable path before the work, not after
        from .fileio import check_writable_dir

        check_writable_dir(args.output)
    cm = compile_model(model, inputs, pipeline=pipeline, target=args.target, dump_dir=args.dump_dir)
    if args.output:
        cm.export_onnx(args.output, dynamic_batch=args.dynamic_batch)
    print(cm.report)
    if args.report:
        cm.report.save(args.report)
        print(f"report written to {args.report}")
    return 0


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fxcompress", description="Compress and compile PyTorch models over torch.fx graphs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the passes do")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="trace a model, run a pass pipeline, report, export")
    c.add_argument("model", help="PATH/TO/file.py:factory, where factory() returns an nn.Module")
    c.add_argument("--input-shape", type=_shape, action="append", required=True,
                   help="shape of one example input, e.g. 1,3,224,224 (repeat for several inputs)")
    c.add_argument("--pipeline", help="a named pipeline ('default') or a TOML pipeline file")
    c.add_argument("--target", default="torch", help="torch | onnx | opencl (default: torch)")
    c.add_argument("-o", "--output", help="export the compiled graph to this ONNX file")
    c.add_argument("--dynamic-batch", action="store_true", help="make the ONNX batch dimension dynamic")
    c.add_argument("--report", help="write the compile report as JSON here")
    c.add_argument("--dump-dir", help="write the graph after every pass to this directory")
    c.add_argument("--seed", type=int, default=0, help="seed of the random example inputs")
    c.set_defaults(func=_cmd_compile)

    p = sub.add_parser("passes", help="list the registered passes and their arguments")
    p.set_defaults(func=_cmd_passes)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CompilerError as e:
        print(f"fxcompress: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
