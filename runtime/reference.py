"""The reference backend: the rewritten GraphModule, run by eager PyTorch."""
from __future__ import annotations

import torch
import torch.fx as fx

from compiler.report import CompileReport


class TorchBackend:
    name = "torch"

    def prepare(self, gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...], report: CompileReport):
        return gm
