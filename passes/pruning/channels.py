"""The data of the channel dependency analysis: spaces, channel maps, the coupling graph.

Every conv/linear output (and every attention layer's set of heads) creates a *space* of prunable
units. Each tensor in the graph carries a *channel map*: for each position along its channel
dimension, the ``(space, index)`` it holds, or None for a channel that is not prunable (a model
input, say). Ops that tie two channels together add an edge between their ``(space, index)`` nodes
in a networkx graph; its connected components are the units of pruning.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch.fx as fx

from compiler import meta

Entry = tuple[int, int] | None  # (space id, channel index) or a fixed channel


@dataclass
class Space:
    id: int
    node: str  # the node that produces it (a conv/linear, or an attention layer for heads)
    size: int
    path: str  # module path of the layer whose parameters hold it (the key of a pruning plan)
    kind: str = "channels"  # or "heads"


@dataclass
class ChannelGraph:
    """Result of the analysis: channel maps, spaces, the coupling graph and what is blocked."""

    maps: dict[str, list[Entry]] = field(default_factory=dict)  # node name -> channel map
    spaces: list[Space] = field(default_factory=list)
    graph: nx.Graph = field(default_factory=nx.Graph)
    blocked: dict[int, str] = field(default_factory=dict)  # space id -> reason
    consumers: list[str] = field(default_factory=list)  # conv/linear nodes whose inputs shrink
    followers: list[str] = field(default_factory=list)  # norm / depthwise nodes whose channels shrink
    # dims of a node's tensor that carry its channel map (row-major): (1,) for NCHW, (3,) after a
    # channels-last permute, (1, 2) inside a channel shuffle's (N, g, C/g, H, W) view
    cdims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    pieces: dict[str, list[list[Entry]]] = field(default_factory=dict)  # chunk/split node -> maps per piece
    # stored tensors combined elementwise with channels (layer scales, position embeddings):
    # get_attr node -> (dim of the tensor, channel map along it)
    params: dict[str, tuple[int, list[Entry]]] = field(default_factory=dict)
    # nodes whose constant arguments count channels (view sizes, split sizes, slice bounds):
    # node -> the channel map of their input, to recount after pruning
    rewrites: dict[str, list[Entry]] = field(default_factory=dict)
    # channel sets of which at least one must survive (split pieces, slices): else a tensor empties
    nonempty: list[set[tuple[int, int]]] = field(default_factory=list)

    def cdim(self, node) -> int | None:
        """The single channel dim of ``node``, or None (no channel dim, or several)."""
        dims = self.cdims.get(node.name) if isinstance(node, fx.Node) else None
        if dims is None:
            return channel_dim(node) if isinstance(node, fx.Node) else None
        return dims[0] if len(dims) == 1 else None

    def components(self) -> list[frozenset[tuple[int, int]]]:
        """Prunable units: coupled channel sets that touch no blocked space."""
        out = []
        for comp in nx.connected_components(self.graph):
            if not any(s in self.blocked for s, _ in comp):
                out.append(frozenset(comp))
        return out

    def space_groups(self) -> list[set[int]]:
        """Spaces coupled by any channel: pruned at one ratio."""
        g = nx.Graph()
        g.add_nodes_from(s.id for s in self.spaces)
        for a, b in self.graph.edges:
            g.add_edge(a[0], b[0])
        return [set(c) for c in nx.connected_components(g)]

    def new_space(self, node: fx.Node, size: int, path: str, kind: str = "channels") -> list[Entry]:
        s = Space(len(self.spaces), node.name, size, path, kind)
        self.spaces.append(s)
        entries = [(s.id, i) for i in range(size)]
        self.graph.add_nodes_from(entries)
        return entries

    def block(self, entries, reason: str) -> None:
        for e in entries or ():
            if e is not None:
                self.blocked.setdefault(e[0], reason)

    def couple(self, a: list[Entry], b: list[Entry], where: str) -> list[Entry]:
        """Tie ``a[i]`` to ``b[i]``; a prunable channel meeting a fixed one is blocked. Returns the merged map."""
        out = list(a)
        for i, (x, y) in enumerate(zip(a, b)):
            if x is not None and y is not None:
                self.graph.add_edge(x, y)
            elif x is not None or y is not None:
                self.block([x, y], f"'{where}' combines prunable and fixed channels")
                out[i] = x or y
        return out

    def couple_pieces(self, entries: list[Entry], pieces: int, where: str) -> None:
        """Split ``entries`` into equal contiguous pieces and tie the same position in every piece
        (chunk, grouped convs, GroupNorm: each piece must lose the same positions)."""
        k = len(entries) // pieces
        first = entries[:k]
        for p in range(1, pieces):
            self.couple(first, entries[p * k:(p + 1) * k], where)

    def keep_one_of(self, entries: list[Entry]) -> None:
        prunable = {e for e in entries if e is not None}
        if prunable and len(prunable) == len(entries):  # a fixed entry already keeps the piece alive
            self.nonempty.append(prunable)

    def fixed(self, node: fx.Node) -> list[Entry]:
        d = channel_dim(node)
        return [None] * meta.shape(node)[d] if d is not None else []


def channel_dim(node: fx.Node) -> int | None:
    s = meta.shape(node)
    if s is None or len(s) < 2:
        return None
    return 1 if len(s) in (3, 4, 5) else len(s) - 1
