"""ONNX export (opset >= 17, checked, parity-tested, atomic) and the onnxruntime backend.

``export_onnx`` writes into a scratch directory beside the destination, runs ``onnx.checker`` and an
onnxruntime parity check there, and only then moves the file(s) into place: a failed export leaves
nothing behind. Models whose initializers exceed ``EXTERNAL_DATA_BYTES`` (protobuf's 2 GiB limit is
hard) keep their weights in ``<name>.onnx.data`` beside the graph.

We use the TorchScript-based exporter (``dynamo=False``): it needs no onnxscript, and it exports
GraphModules (including our ``FusedOp`` modules) as plain ONNX ops.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.utils import _pytree as pytree

from compiler.errors import ExportError, InputError
from compiler.fileio import atomic_dir, check_writable_dir
from compiler.instruments import flat_tensors, output_error
from compiler.report import CompileReport

log = logging.getLogger(__name__)

MIN_OPSET = 17
EXTERNAL_DATA_BYTES = 1 << 30  # well under protobuf's 2 GiB message limit


@dataclass(frozen=True)
class ExportResult:
    path: str
    opset: int
    external_data: bool
    size_bytes: int
    max_abs_err: float | None  # onnxruntime vs torch on the example inputs
    max_rel_err: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def export_onnx(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: str | os.PathLike,
    *,
    opset: int = MIN_OPSET,
    dynamic_batch: bool = False,
    external_data: bool | None = None,
    check_parity: bool = True,
    parity_tolerance: float = 1e-4,
) -> ExportResult:
    """Export ``module`` to ONNX at ``path``, atomically, and check it.

    Parameters
    ----------
    external_data : bool, optional
        Store weights in ``<path>.data``. Default: only when they exceed 1 GiB.
    check_parity : bool
        Run the file in onnxruntime and compare with ``module`` on ``example_inputs``; raise
        ``ExportError`` when the max relative error exceeds ``parity_tolerance``.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; fxcompress exports opset >= {MIN_OPSET}")
    path = check_writable_dir(path)
    inputs = tuple(example_inputs)
    with torch.no_grad():
        reference = module(*inputs)
    n_out = len(flat_tensors(reference))
    in_names = [f"input_{i}" for i in range(len(inputs))]
    out_names = [f"output_{i}" for i in range(n_out)]
    axes = {name: {0: "batch"} for name in in_names + out_names} if dynamic_batch else None

    with atomic_dir(path) as tmp:
        raw = tmp / "raw.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    module, inputs, str(raw), dynamo=False, opset_version=opset,
                    input_names=in_names, output_names=out_names, dynamic_axes=axes, do_constant_folding=True,
                )
            model = onnx.load(str(raw))
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"torch.onnx.export failed for '{path}': {type(e).__name__}: {e}") from e
        weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
        use_external = external_data if external_data is not None else weight_bytes > EXTERNAL_DATA_BYTES
        final, data_name = tmp / path.name, f"{path.name}.data"
        onnx.save_model(model, str(final), save_as_external_data=use_external,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        del model
        try:
            onnx.checker.check_model(str(final), full_check=False)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"onnx.checker rejected the export of '{path}': {e}") from e
        errs = (None, None)
        if check_parity:
            outputs = OrtRunner(final, reference)(*inputs)
            errs = output_error(reference, outputs)
            if not errs[1] <= parity_tolerance:
                raise ExportError(
                    f"onnxruntime output differs from torch: max rel error {errs[1]:.3e} > {parity_tolerance:.1e}"
                )
        size = sum(f.stat().st_size for f in tmp.iterdir() if f.name != raw.name)
        if use_external:
            os.replace(tmp / data_name, path.parent / data_name)
        os.replace(final, path)
    log.info("exported %s (%d bytes, opset %d)", path, size, opset)
    return ExportResult(str(path), opset, use_external, size, *errs)


class OrtRunner:
    """Runs an ONNX file in onnxruntime; called with torch tensors, returns torch tensors.

    Outputs are returned in the structure of ``example_output`` (a tensor, tuple, dict ...).
    """

    def __init__(self, path: str | os.PathLike, example_output, *, threads: int | None = None):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"onnxruntime cannot load '{path}': {e}") from e
        self.inputs = self.session.get_inputs()
        self.spec = pytree.tree_structure(example_output)

    def __call__(self, *tensors: torch.Tensor):
        if len(tensors) != len(self.inputs):
            raise InputError(f"the model takes {len(self.inputs)} inputs {[i.name for i in self.inputs]}, got {len(tensors)}")
        feed = {}
        for spec, t in zip(self.inputs, tensors):
            if not isinstance(t, torch.Tensor):
                raise InputError(f"input '{spec.name}' must be a torch.Tensor, got {type(t).__name__}")
            want = [d if isinstance(d, int) else None for d in spec.shape]
            if t.dim() != len(want) or any(w is not None and w != s for w, s in zip(want, t.shape)):
                raise InputError(f"input '{spec.name}' has shape {tuple(t.shape)}, the ONNX model expects {tuple(spec.shape)}")
            if str(t.dtype).removeprefix("torch.") != _ORT_TYPES.get(spec.type, spec.type):
                raise InputError(f"input '{spec.name}' has dtype {t.dtype}, the ONNX model expects {spec.type}")
            feed[spec.name] = t.detach().cpu().contiguous().numpy()
        outs = self.session.run(None, feed)
        return pytree.tree_unflatten([torch.from_numpy(np.asarray(o)) for o in outs], self.spec)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8"}


class OnnxBackend:
    """Exports the graph to a private temporary file and runs it in onnxruntime."""

    name = "onnx"

    def prepare(self, gm, example_inputs, report: CompileReport):
        tmp = tempfile.TemporaryDirectory(prefix="fxcompress-onnx-")
        result = export_onnx(gm, example_inputs, Path(tmp.name) / "model.onnx")
        report.export = result.to_dict()
        with torch.no_grad():
            example_output = gm(*example_inputs)
        runner = OrtRunner(result.path, example_output)
        runner._keepalive = tmp  # the file lives as long as the runner
        return runner
