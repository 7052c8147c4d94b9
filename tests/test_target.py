"""Targets: presets are labelled spec sheets; a live device measures into a Target."""
import pytest

from compiler.errors import InputError
from compiler.target import Target


def test_rx580_preset_is_a_spec_sheet():
    t = Target.preset("rx580")
    assert (t.compute_units, t.simd_width, t.bandwidth_gbs) == (36, 64, 256.0)
    assert 6000 < t.peak_gflops < 6300 and t.source == "spec sheet"


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(InputError, match=r"unknown target preset 'gtx', valid presets are \['rx580'\]"):
        Target.preset("gtx")


def test_live_device_is_measured():
    probe = pytest.importorskip("runtime.opencl.probe")
    try:
        t = probe.measure_target(repeats=2)
    except Exception as e:  # noqa: BLE001 - no OpenCL device here
        pytest.skip(f"no OpenCL device: {e}")
    assert t.source.startswith("measured") and t.kind == "cpu"
    assert t.peak_gflops > 10 and t.bandwidth_gbs > 1 and 0 < t.launch_us < 1000
    assert t.compute_units >= 1 and t.global_mem_bytes > 2**30
