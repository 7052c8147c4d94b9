"""A graph's outline for the report's drawings: per node its op, a short label, its block and inputs.

``sketch(gm)`` is JSON-able, so it travels in the report (``CompileReport.graphs``) and the HTML page
(``compiler.report_html``) draws it without torch. Nodes are grouped into blocks by module path:
a top-level child of the model is one block unless it holds more than ``MAX_BLOCK`` nodes, then its
children are (ResNet-50: ``layer1.0`` ... ``layer4.2``, each a bottleneck), and runs of small
neighbouring blocks (of at most half that each) that are siblings (or parent and child) in the module tree are merged up to
``MERGE_UP_TO`` nodes (a stem's conv, bn, relu and pool; a head's pool, flatten and fc; never the tail
of one transformer block with the head of the next).
"""
from __future__ import annotations

from collections import Counter

from torch import fx, nn

MAX_BLOCK = 30
MERGE_UP_TO = 14


def sketch(gm: fx.GraphModule) -> dict:
    """``{"nodes": [{name, op, label, path, inputs}], "blocks": [{name, nodes}]}`` in graph order."""
    paths: dict[str, str] = {}
    nodes = []
    for n in gm.graph.nodes:
        inputs = [a.name for a in n.all_input_nodes]
        path = _path(gm, n) or next((paths[i] for i in inputs if paths.get(i)), "")
        paths[n.name] = path
        nodes.append({"name": n.name, "op": n.op, "label": _label(gm, n), "path": path, "inputs": inputs})
    return {"nodes": nodes, "blocks": blocks(nodes)}


def blocks(nodes: list[dict], prefixes: list[str] | None = None) -> list[dict]:
    """Contiguous groups of ``nodes`` named by module path. With ``prefixes`` (another sketch's block
    names: the graph before the passes), each node joins the longest prefix of its path among them,
    so the graph after the passes is drawn in the same blocks as the graph before."""
    if prefixes is not None:
        known = sorted((p for p in prefixes if p), key=len, reverse=True)
        keys = [next((p for p in known if n["path"] == p or n["path"].startswith(p + ".")), n["path"].split(".")[0])
                for n in nodes]
    else:
        keys = _keys([n["path"] for n in nodes])
    runs: list[dict] = []
    for n, key in zip(nodes, keys):
        if n["op"] in ("placeholder", "output", "get_attr"):
            key = {"placeholder": "input", "output": "output"}.get(n["op"], key)
        if runs and runs[-1]["name"] == key:
            runs[-1]["nodes"].append(n["name"])
        else:
            runs.append({"name": key, "nodes": [n["name"]]})
    if prefixes is not None:
        return runs
    merged: list[dict] = []
    for r in runs:  # neighbouring small blocks (a stem, a head) become one drawing
        last = merged[-1] if merged else None
        small = len(r["nodes"]) <= MERGE_UP_TO // 2
        if last and last["small"] and small and "input" not in last["parts"] and r["name"] not in ("input", "output") \
                and _related(last["parts"][-1], r["name"]) and len(last["nodes"]) + len(r["nodes"]) <= MERGE_UP_TO:
            last["parts"].append(r["name"])
            last["nodes"] += r["nodes"]
        else:
            merged.append({"parts": [r["name"]], "nodes": list(r["nodes"]), "small": small})
    return [{"name": m["parts"][0] if len(m["parts"]) == 1 else f"{m['parts'][0]} .. {m['parts'][-1]}",
             "parts": m["parts"], "nodes": m["nodes"]} for m in merged]


def _related(a: str, b: str) -> bool:
    """Siblings, or parent and child, in the module tree: blocks that may share a drawing."""
    pa, pb = a.rpartition(".")[0], b.rpartition(".")[0]
    return pa == pb or a == pb or b == pa


def block_prefixes(sk: dict) -> list[str]:
    """The module paths a sketch's blocks stand for (merged blocks stand for each of their parts)."""
    return [p for b in sk["blocks"] for p in b.get("parts", [b["name"]]) if p not in ("input", "output")]


def _keys(paths: list[str]) -> list[str]:
    """Each path's block: its first component, or deeper while that block has over MAX_BLOCK nodes."""
    under = Counter(".".join(p.split(".")[:d]) for p in paths for d in range(1, p.count(".") + 2))  # nodes per prefix
    keys = []
    for p in paths:
        parts = p.split(".") if p else [""]
        depth = 1
        while depth < len(parts) and under[".".join(parts[:depth])] > MAX_BLOCK:
            depth += 1
        keys.append(".".join(parts[:depth]))
    return keys


def _path(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op in ("call_module", "get_attr"):
        return str(n.target)
    stack = n.meta.get("nn_module_stack")
    if stack:
        last = list(stack.values())[-1]
        return last[0] if isinstance(last, tuple) else str(last)
    return ""


def _label(gm: fx.GraphModule, n: fx.Node) -> str:
    if n.op == "placeholder":
        return f"input {n.name}"
    if n.op == "output":
        return "output"
    if n.op == "get_attr":
        return f"constant {n.target}"
    if n.op == "call_module":
        return module_label(gm.get_submodule(n.target))
    name = getattr(n.target, "__name__", str(n.target))
    return name if n.op == "call_function" else f".{name}()"


def module_label(m: nn.Module) -> str:
    """``Conv2d 3x3 32>64 /2``, ``Linear 576>10``, ``FusedOp(Conv2d 1x1 64>256) +res relu``."""
    inner = getattr(m, "op", None)
    if isinstance(inner, nn.Module) and hasattr(m, "activation"):
        extra = (" +res" if getattr(m, "residual", False) else "") + (f" {m.activation}" if m.activation else "")
        return f"{module_label(inner)}{extra}"
    name = type(m).__name__
    w = getattr(m, "weight", None)
    if isinstance(m, nn.modules.conv._ConvNd) and w is not None:
        k = "x".join(map(str, m.kernel_size))
        s = max(m.stride) if isinstance(m.stride, tuple) else m.stride
        g = f" g{m.groups}" if m.groups > 1 else ""
        return f"{name} {k} {m.in_channels}>{m.out_channels}" + (f" /{s}" if s > 1 else "") + g
    if isinstance(m, nn.Linear):
        return f"{name} {m.in_features}>{m.out_features}"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return f"{name} {m.num_features}"
    return name
