"""Typed accessors for what fxcompress keeps in ``node.meta``.

State lives in ``node.meta`` under these keys only, never as attributes on ``fx.Node``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import TensorMetadata

_TENSOR_META = "tensor_meta"  # written by torch.fx.passes.shape_prop.ShapeProp


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


def tensor_info(node: fx.Node) -> TensorInfo | None:
    """Shape and dtype of a node that produces a single tensor, or None."""
    tm = node.meta.get(_TENSOR_META)
    if isinstance(tm, TensorMetadata):
        return TensorInfo(tuple(tm.shape), tm.dtype)
    return None


def shape(node: fx.Node) -> tuple[int, ...] | None:
    info = tensor_info(node)
    return info.shape if info else None


def has_shapes(gm: fx.GraphModule) -> bool:
    return all(_TENSOR_META in n.meta for n in gm.graph.nodes if n.op not in ("output",))
