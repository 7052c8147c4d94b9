import os

import pytest
import torch

# `make test` runs two pytest-xdist workers on the two cores: one torch thread and one PoCL thread
# each, so neither oversubscribes the machine (run alone, a test gets both cores).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("POCL_MAX_PTHREAD_COUNT", "1")
torch.set_num_threads(max(1, 2 // WORKERS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, the report's definition."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def import_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module, for its pure helpers, leaving ``sys.path`` as
    it was. The real ``runtime`` package is imported first: with benchmarks/ on the path,
    ``benchmarks/runtime.py`` shadows it, and a script's ``_timing`` import takes benchmarks/ off
    the path only the first time ``_timing`` is imported in a process."""
    import importlib
    import sys
    from pathlib import Path

    import runtime.onnx  # noqa: F401

    saved = list(sys.path)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved
