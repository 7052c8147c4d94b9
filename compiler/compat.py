"""Make the CUDA torchvision wheel importable on CPU-only torch, before any user code runs.

torchvision 0.28.0 from PyPI is a CUDA build (``0.28.0+cu130``): on CPU torch its ``_C`` extension
does not load and ``import torchvision`` - which ``import timm`` does - dies with "operator
torchvision::nms does not exist". Registering the ``nms``/``qnms`` schemas, with a pure-PyTorch CPU
implementation, before the import fixes it; classification models need no other compiled op.

``import compiler`` calls :func:`patch_torchvision`, so the CLI, ``compile()`` and a user's factory
that imports timm all see a working torchvision. It does nothing when torch itself is a CUDA build
or torchvision is a CPU build (whose own extension defines the ops), and it never imports torchvision.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

_lib = None


def _nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = scores.argsort(descending=True)
    keep = []
    x1, y1, x2, y2 = dets.unbind(1)
    area = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(len(dets), dtype=torch.bool)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        inter = w * h
        suppressed |= inter / (area[i] + area - inter) > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def _cuda_torchvision_on_cpu_torch() -> bool:
    if torch.version.cuda is not None:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    version = Path(next(iter(spec.submodule_search_locations)), "version.py")
    try:
        text = version.read_text()
    except OSError:
        return False
    return re.search(r"__version__\s*=\s*['\"][^'\"]*\+cu\d+", text) is not None


def patch_torchvision() -> bool:
    """Register the ``torchvision::nms``/``qnms`` schemas if the installed torchvision needs them.

    Returns whether they are registered by us. Idempotent.
    """
    global _lib
    if _lib is not None:
        return True
    if not _cuda_torchvision_on_cpu_torch():
        return False
    try:
        torch.ops.torchvision.nms  # noqa: B018 - already defined (torchvision imported with a working extension)
        return False
    except (AttributeError, RuntimeError):
        pass
    _lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _lib.impl(op, _nms, "CPU")
    return True
