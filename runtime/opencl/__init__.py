"""The OpenCL backend: device choice, cached program builds, and kernels in ``kernels/*.cl``."""
from .device import Device, list_devices, open_device, select_device
from .errors import (
    DeviceOutOfMemoryError,
    KernelBuildError,
    NoOpenCLError,
    OpenCLError,
    UnknownDeviceError,
    UnsupportedError,
)
from .gemm import Gemm, GemmConfig, pack_b
from .programs import build_program, kernel_source

__all__ = [
    "Device", "list_devices", "open_device", "select_device",
    "DeviceOutOfMemoryError", "KernelBuildError", "NoOpenCLError", "OpenCLError", "UnknownDeviceError",
    "UnsupportedError", "Gemm", "GemmConfig", "pack_b", "build_program", "kernel_source",
]
