"""Backends that execute compiled graphs: eager torch (the reference) and onnxruntime."""
from .backend import Backend, Runner, available_backends, device_runner, get_backend
from .onnx import ExportResult, OrtRunner, export_onnx


__all__ = ["Backend", "Runner", "available_backends", "get_backend", "device_runner", "ExportResult", "OrtRunner",
           "export_onnx"]
