"""Building OpenCL programs, cached in memory and as device binaries on disk.

A build costs 0.1 to 0.9 s on PoCL, so a program is built once per machine, not once per process:

- in process, a dict maps (context, key) to the built program;
- on disk, ``<cache dir>/<key>.bin`` holds the device binary, where ``key`` is the sha256 of the
  source, the build options, the device name, the driver version and the platform version. A
  second process loads the binary (``clCreateProgramWithBinary``), skipping the front end.

The cache dir is ``$FXCOMPRESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/fxcompress/opencl``, else
``~/.cache/fxcompress/opencl``. Entries are written atomically (a temporary file, then
``os.replace``) and carry a checksum: a truncated or corrupt entry is rebuilt and rewritten, never
fatal. Handing a damaged binary to the driver is avoided because PoCL asserts on some of them.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pyopencl as cl

from .device import Device
from .errors import KernelBuildError, translate

log = logging.getLogger(__name__)

_MAGIC = b"fxcompress-opencl-binary-v1\n"


@dataclass
class BuildStats:
    """How each ``build_program`` call was served, in this process."""

    compiled: int = 0  # built from source (disk cache missing, corrupt or unusable)
    loaded: int = 0  # loaded from a binary on disk
    memory_hits: int = 0


stats = BuildStats()
_programs: dict[tuple[cl.Context, str], cl.Program] = {}


def cache_dir() -> Path:
    if os.environ.get("FXCOMPRESS_CACHE_DIR"):
        return Path(os.environ["FXCOMPRESS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fxcompress" / "opencl"


def kernel_source(name: str) -> str:
    """The text of ``runtime/opencl/kernels/<name>`` (installed as package data), with each line
    ``#include "<file>"`` replaced by that file's text from the same folder: the program cache keys
    on the expanded source, so a change to a shared header rebuilds the programs that include it
    (an OpenCL ``-I`` include would not)."""
    text = resources.files(__package__).joinpath("kernels", name).read_text()
    return re.sub(r'^#include "([\w.]+)"$', lambda m: kernel_source(m.group(1)), text, flags=re.MULTILINE)


def cache_key(device: Device, source: str, options: Sequence[str]) -> str:
    dev, platform = device.cl_device, device.entry.platform
    h = hashlib.sha256()
    for part in (source, "\0".join(options), dev.name, dev.driver_version, platform.version):
        h.update(part.encode())
        h.update(b"\1")
    return h.hexdigest()


def build_program(device: Device, source: str, options: Sequence[str] = (), *, name: str = "<string>") -> cl.Program:
    """The built program for ``source`` and ``options``, from memory, from disk, or compiled.

    ``name`` (the .cl file) appears in logs and in the ``KernelBuildError`` a failed build raises.
    """
    options = list(options)
    key = cache_key(device, source, options)
    if (device.context, key) in _programs:
        stats.memory_hits += 1
        return _programs[(device.context, key)]
    path = cache_dir() / f"{key}.bin"
    t0 = time.perf_counter()
    program = _load(device, path, options, name)
    if program is not None:
        stats.loaded += 1
        log.debug("loaded %s from %s in %.3f s", name, path, time.perf_counter() - t0)
    else:
        program = _compile(device, source, options, name)
        stats.compiled += 1
        log.debug("built %s in %.3f s", name, time.perf_counter() - t0)
        _store(path, program)
    _programs[(device.context, key)] = program
    return program


def _compile(device: Device, source: str, options: list[str], name: str) -> cl.Program:
    program = cl.Program(device.context, source)
    try:
        with warnings.catch_warnings():  # pyopencl warns on a non-empty log; we log it, naming the file
            warnings.simplefilter("ignore", cl.CompilerWarning)
            program.build(options, devices=[device.cl_device])
    except cl.Error as e:
        if getattr(e, "code", None) == cl.status_code.BUILD_PROGRAM_FAILURE:
            build_log = program.get_build_info(device.cl_device, cl.program_build_info.LOG)
            raise KernelBuildError(name, options, _name_file(build_log, name), device.name) from None
        raise translate(e, what=f"building {name}") from e
    build_log = program.get_build_info(device.cl_device, cl.program_build_info.LOG).strip()
    if build_log:
        log.warning("OpenCL build of %s said:\n%s", name, _name_file(build_log, name))
    return program


def _name_file(build_log: str, name: str) -> str:
    """PoCL compiles a temporary copy; name the file the user can open instead."""
    return re.sub(r"\S*tempfile_\w+\.cl", name, build_log)


def _load(device: Device, path: Path, options: list[str], name: str) -> cl.Program | None:
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    binary = _unwrap(blob)
    if binary is None:
        log.warning("OpenCL cache entry %s for %s is corrupt; rebuilding it", path, name)
        return None
    try:
        return cl.Program(device.context, [device.cl_device], [binary]).build(options, devices=[device.cl_device])
    except cl.Error as e:
        log.warning("OpenCL cache entry %s for %s was refused by the driver (%s); rebuilding it", path, name, e)
        return None


def _wrap(binary: bytes) -> bytes:
    return _MAGIC + hashlib.sha256(binary).hexdigest().encode() + b"\n" + binary


def _unwrap(blob: bytes) -> bytes | None:
    if not blob.startswith(_MAGIC):
        return None
    digest, _, binary = blob[len(_MAGIC):].partition(b"\n")
    return binary if binary and hashlib.sha256(binary).hexdigest().encode() == digest else None


def _store(path: Path, program: cl.Program) -> None:
    """Write the program's binary atomically. A cache that cannot be written only costs time."""
    try:
        (binary,) = program.get_info(cl.program_info.BINARIES)
    except (cl.Error, ValueError) as e:
        log.warning("cannot read back the program binary (%s); not caching it", e)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_wrap(bytes(binary)))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        log.warning("cannot write the OpenCL cache entry %s: %s", path, e)


def clear_memory_cache() -> None:
    """Forget the in-process programs (the disk cache stays); for tests and benchmarks."""
    _programs.clear()

