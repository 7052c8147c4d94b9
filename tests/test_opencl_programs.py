"""Program builds: the disk cache across processes, corrupt entries, build errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

cl = pytest.importorskip("pyopencl")

from runtime.opencl import programs  # noqa: E402
from runtime.opencl.device import open_device  # noqa: E402
from runtime.opencl.errors import KernelBuildError, NoOpenCLError, UnknownDeviceError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def device():
    try:
        return open_device()
    except NoOpenCLError as e:
        if isinstance(e, UnknownDeviceError):  # a bad $FXCOMPRESS_OPENCL_DEVICE is an error, not a skip
            raise
        pytest.skip(f"no OpenCL platform: {e}")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FXCOMPRESS_CACHE_DIR", str(tmp_path))
    programs.clear_memory_cache()
    yield tmp_path
    programs.clear_memory_cache()


def _source() -> str:
    # Unique code, so neither our cache nor PoCL's (keyed on the preprocessed source) has seen it.
    tag = uuid.uuid4().int % 2**24  # exact as a float
    return (f"__constant int tag = {tag};\n"
            "__kernel void scale(__global float* x, float s) { x[get_global_id(0)] *= s + tag * 0.0f; }\n")


_CHILD = """
import json, sys, time
from runtime.opencl import programs
from runtime.opencl.device import open_device
device = open_device()
t0 = time.perf_counter()
programs.build_program(device, sys.stdin.read(), ["-DUNUSED=1"], name="scale.cl")
print(json.dumps({"seconds": time.perf_counter() - t0, **vars(programs.stats)}))
"""


def _build_in_child(source: str, cache_dir: Path) -> dict:
    env = {**os.environ, "FXCOMPRESS_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", _CHILD], input=source, capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_binary(device, cache):
    source = _source()
    cold = _build_in_child(source, cache)
    warm = _build_in_child(source, cache)
    assert (cold["compiled"], cold["loaded"]) == (1, 0)
    assert (warm["compiled"], warm["loaded"]) == (0, 1)
    assert warm["seconds"] < cold["seconds"] / 2  # measured: ~1.2 s cold, ~6 ms warm
    (entry,) = cache.glob("*.bin")
    assert entry.name == programs.cache_key(device, source, ["-DUNUSED=1"]) + ".bin"
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "a temporary file was left behind"
    print(f"cold build {cold['seconds'] * 1e3:.0f} ms, warm load {warm['seconds'] * 1e3:.0f} ms")


def test_memory_cache_and_key(device, cache):
    source = _source()
    before = vars(programs.stats).copy()
    p1 = programs.build_program(device, source, ["-DA=1"])
    p2 = programs.build_program(device, source, ["-DA=1"])
    p3 = programs.build_program(device, source, ["-DA=2"])
    assert p1 is p2 and p3 is not p1
    assert programs.stats.memory_hits == before["memory_hits"] + 1
    assert programs.stats.compiled == before["compiled"] + 2
    assert len(list(cache.glob("*.bin"))) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_entry_is_rebuilt(device, cache, damage):
    source = _source()
    programs.build_program(device, source)
    (entry,) = cache.glob("*.bin")
    blob = entry.read_bytes()
    entry.write_bytes({"truncate": blob[: len(blob) // 2],
                       "flip": blob[:-10] + bytes(b ^ 0xFF for b in blob[-10:]),
                       "garbage": b"not a binary"}[damage])
    programs.clear_memory_cache()
    compiled = programs.stats.compiled
    program = programs.build_program(device, source)
    assert programs.stats.compiled == compiled + 1
    assert programs._unwrap(entry.read_bytes()) is not None  # rewritten, valid again
    cl.Kernel(program, "scale")


def test_unwritable_cache_is_not_fatal(device, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FXCOMPRESS_CACHE_DIR", str(blocker / "sub"))  # a directory below a file
    programs.clear_memory_cache()
    cl.Kernel(programs.build_program(device, _source()), "scale")


def test_syntax_error_raises_kernel_build_error_with_log(device, cache):
    with pytest.raises(KernelBuildError) as info:
        programs.build_program(device, "__kernel void broken(__global float* x) { x[0] = ; }\n",
                               ["-DWHATEVER"], name="broken.cl")
    err = info.value
    assert err.path == "broken.cl" and err.options == ["-DWHATEVER"]
    assert "error" in err.log.lower() and "broken.cl:1:" in err.log  # the log names our file, not PoCL's temp copy
    assert "broken.cl" in str(err) and err.log.strip() in str(err)
    assert not list(cache.glob("*.bin"))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("FXCOMPRESS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert programs.cache_dir() == tmp_path / "fxcompress" / "opencl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert programs.cache_dir() == Path.home() / ".cache" / "fxcompress" / "opencl"


def test_kernel_sources_are_package_data():
    assert "__kernel void gemm" in programs.kernel_source("gemm.cl")


def test_kernel_source_expands_shared_headers():
    """The cache keys on the expanded text, so editing vec.h rebuilds dwconv and pool programs."""
    from runtime.opencl.programs import kernel_source

    for name in ("dwconv.cl", "pool.cl"):
        text = kernel_source(name)
        assert '#include "vec.h"' not in text and text.count("inline VEC load_lanes") == 1
        assert kernel_source("vec.h") in text
