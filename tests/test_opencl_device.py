"""Device selection and the typed errors of runtime/opencl."""
from __future__ import annotations

import pytest

cl = pytest.importorskip("pyopencl")

from runtime.opencl import device as dev_mod  # noqa: E402
from runtime.opencl.errors import (  # noqa: E402
    DeviceOutOfMemoryError,
    NoOpenCLError,
    OpenCLError,
    UnknownDeviceError,
    translate,
)


@pytest.fixture(scope="module")
def entries():
    try:
        return dev_mod.list_devices()
    except NoOpenCLError as e:
        pytest.skip(f"no OpenCL platform: {e}")


@pytest.fixture(autouse=True)
def _no_env_selector(monkeypatch):
    monkeypatch.delenv(dev_mod.ENV_VAR, raising=False)


def test_default_prefers_pocl_cpu(entries):
    pocl_cpus = [e for e in entries if "portable computing language" in e.platform.name.lower()
                 and e.device.type & cl.device_type.CPU]
    if not pocl_cpus:
        pytest.skip("no PoCL CPU device to prefer")
    assert dev_mod.select_device().index == pocl_cpus[0].index


def test_select_by_index_and_by_name(entries):
    first = entries[0]
    assert dev_mod.select_device(first.index).index == first.index
    fragment = first.device.name.strip()[:6].swapcase()  # matching ignores case
    assert fragment.lower() in dev_mod.select_device(fragment).searchable


def test_env_var_selects(entries, monkeypatch):
    monkeypatch.setenv(dev_mod.ENV_VAR, entries[-1].index)
    assert dev_mod.select_device().index == entries[-1].index
    # the argument wins over the environment
    assert dev_mod.select_device(entries[0].index).index == entries[0].index


def test_bad_selector_lists_valid_devices(entries, monkeypatch):
    with pytest.raises(UnknownDeviceError) as info:
        dev_mod.select_device("no-such-accelerator")
    message = str(info.value)
    assert "'no-such-accelerator'" in message and "valid devices are" in message
    assert all(e.label in message for e in entries)
    assert isinstance(info.value, NoOpenCLError)

    monkeypatch.setenv(dev_mod.ENV_VAR, "9:9")
    with pytest.raises(UnknownDeviceError, match=r"'9:9' \(from \$FXCOMPRESS_OPENCL_DEVICE\)"):
        dev_mod.select_device()


class _EmptyPlatform:
    name = "Fake Platform"

    def get_devices(self):
        return []


def test_no_device_gives_install_hint_and_what_was_found(monkeypatch):
    monkeypatch.setattr(dev_mod.cl, "get_platforms", lambda: [])
    with pytest.raises(NoOpenCLError, match="apt-get install -y pocl-opencl-icd"):
        dev_mod.list_devices()
    monkeypatch.setattr(dev_mod.cl, "get_platforms", lambda: [_EmptyPlatform()])
    with pytest.raises(NoOpenCLError, match=r"platforms without devices: \['Fake Platform'\].*pocl-opencl-icd"):
        dev_mod.open_device()


def test_allocation_beyond_the_device_is_typed(entries):
    device = dev_mod.open_device()
    too_big = device.cl_device.max_mem_alloc_size + 2**20
    with pytest.raises(DeviceOutOfMemoryError, match="requested") as info:
        device.alloc(too_big, what="allocating the test buffer")
    assert "allocating the test buffer" in str(info.value) and device.name in str(info.value)
    assert isinstance(info.value, MemoryError)


def test_translate_names_the_code(entries):
    device = dev_mod.open_device().cl_device
    oom = cl.MemoryError(cl._cl._ErrorRecord("clEnqueueNDRangeKernel", cl.status_code.OUT_OF_RESOURCES, ""))
    err = translate(oom, what="running conv1", device=device, nbytes=3 * 2**30)
    assert isinstance(err, DeviceOutOfMemoryError)
    assert "3.00 GiB requested" in str(err) and "running conv1" in str(err) and err.code == "OUT_OF_RESOURCES"

    bad = cl.LogicError(cl._cl._ErrorRecord("clEnqueueNDRangeKernel", cl.status_code.INVALID_WORK_GROUP_SIZE, ""))
    err = translate(bad, what="running gemm")
    assert type(err) is OpenCLError and "INVALID_WORK_GROUP_SIZE" in str(err) and "local work size" in str(err)
