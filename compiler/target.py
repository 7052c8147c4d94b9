"""Targets: a frozen description of the device a cost model plans for.

A ``Target`` comes either from a named preset, for planning offline (``Target.preset("rx580")``),
or from measuring a live OpenCL device (``runtime.opencl.probe.measure_target``, which queries the
device and runs micro-benchmarks). ``source`` says which: a spec sheet is not a calibration.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import InputError, choices


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    kind: str  # "cpu" or "gpu"
    compute_units: int
    clock_mhz: int
    simd_width: int  # float32 lanes per SIMD unit (AVX-512: 16) or the wavefront width (GCN: 64)
    local_mem_bytes: int
    global_mem_bytes: int
    peak_gflops: float  # float32
    bandwidth_gbs: float  # global memory
    launch_us: float  # cost of one queued kernel launch
    source: str  # "spec sheet" or "measured: <how>"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def preset(cls, name: str) -> "Target":
        if name not in PRESETS:
            raise InputError(f"unknown target preset '{name}', valid presets are {choices(PRESETS)}")
        return PRESETS[name]


PRESETS: dict[str, Target] = {
    # AMD Radeon RX 580 (Polaris 10, GCN 4): 36 CUs x 64 lanes x 2 FLOP x 1340 MHz boost = 6.17
    # TFLOP/s; 256-bit GDDR5 at 8 Gbps = 256 GB/s; 64 KiB LDS per CU. From AMD's spec sheet, not
    # measured: a plan made with it is a starting point until the card is calibrated.
    "rx580": Target(name="AMD Radeon RX 580 (Polaris 10)", kind="gpu", compute_units=36, clock_mhz=1340,
                    simd_width=64, local_mem_bytes=64 * 1024, global_mem_bytes=8 * 2**30, peak_gflops=6175.0,
                    bandwidth_gbs=256.0, launch_us=5.0,  # launch cost assumed, not on the sheet
                    source="spec sheet"),
}
