"""The torchvision model zoo, made usable on CPU torch, with weights randomised for numeric checks.

torchvision 0.28.0 from PyPI is a CUDA build: on CPU torch its ``_C`` extension does not load and
``import torchvision`` dies with "operator torchvision::nms does not exist". Registering the
``nms``/``qnms`` schemas (with a pure-PyTorch CPU implementation) before the import fixes it; the
classification models need no compiled op.
"""
from __future__ import annotations

import importlib
import math

import torch
from torch import nn

# name -> input size (square) for fast tests: small where the model allows. vit_b_16 and maxvit_t fix 224;
# alexnet and vgg16 need 224 because the legacy ONNX exporter only handles adaptive pooling whose
# output size divides the input size.
ZOO: dict[str, int] = {
    "resnet18": 64, "resnet50": 64, "resnext50_32x4d": 64, "wide_resnet50_2": 64,
    "mobilenet_v2": 64, "mobilenet_v3_small": 64, "mobilenet_v3_large": 64,
    "efficientnet_b0": 64, "efficientnet_v2_s": 64, "vgg16": 224, "alexnet": 224, "densenet121": 64,
    "regnet_x_400mf": 64, "regnet_y_400mf": 64, "shufflenet_v2_x1_0": 64, "squeezenet1_1": 64,
    "mnasnet0_5": 64, "googlenet": 64, "inception_v3": 80, "convnext_tiny": 64,
    "vit_b_16": 224, "swin_t": 64, "swin_v2_t": 64, "maxvit_t": 224,
}

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


def import_torchvision():
    """Import torchvision on CPU-only torch (see the module docstring)."""
    global _lib
    try:
        torch.ops.torchvision.nms
    except (AttributeError, RuntimeError):
        if _lib is None:
            _lib = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                _lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                _lib.impl(op, _nms, "CPU")
    return importlib.import_module("torchvision")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomise BatchNorm statistics and affine terms, and re-draw zero-initialised weights.

    Default inits leave some zoo outputs near zero (mobilenet_v3, efficientnet, the ViT head), so a
    numeric check on them would prove nothing.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if p.dim() >= 1 and not p.abs().gt(0).any():  # zero-initialised (heads, layer scales, biases)
                bound = 1.0 / math.sqrt(max(1, p.shape[-1] if p.dim() > 1 else p.numel()))
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
    return model.eval()


def build(name: str, *, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A randomised zoo model in eval mode and a batch-1 example input of its test size."""
    tv = import_torchvision()
    if name not in ZOO:
        raise KeyError(f"unknown zoo model '{name}', known: {sorted(ZOO)}")
    torch.manual_seed(seed)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = getattr(tv.models, name)(weights=None, **kwargs)
    size = ZOO[name]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    return randomize(model, seed), x
