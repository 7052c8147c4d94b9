"""Backends that execute compiled graphs: eager torch (the reference) and onnxruntime."""
from .backend import Backend, Runner, available_backends, get_backend
from .onnx import ExportResult, OrtRunner, export_onnx


def device_runner(gm, example_inputs):
    """``gm`` prepared on the OpenCL runtime, and the call that runs it on ``example_inputs``: the
    ``compiler.pass_base.DeviceRunner`` that ``compiler.compile`` gives passes that time on the device."""
    from compiler.report import CompileReport

    from .opencl.backend import OpenCLBackend

    runner = OpenCLBackend().prepare(gm, example_inputs, CompileReport())
    return lambda: runner(*example_inputs)


__all__ = ["Backend", "Runner", "available_backends", "get_backend", "device_runner", "ExportResult", "OrtRunner",
           "export_onnx"]
