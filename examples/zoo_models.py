"""Model factories for ``fxcompress compile examples/zoo_models.py:<name>``: torchvision architectures
with ``weights=None`` (no downloads here) and randomised BatchNorm statistics, so numeric checks
mean something. Untrained: use them for latency and plan experiments, not accuracy."""
from __future__ import annotations

from torch import nn

from compiler import zoo


def _build(name: str) -> nn.Module:
    tv = zoo.import_torchvision()
    return zoo.randomize(getattr(tv.models, name)(weights=None)).eval()


def resnet18() -> nn.Module:
    return _build("resnet18")


def mobilenet_v2() -> nn.Module:
    return _build("mobilenet_v2")
