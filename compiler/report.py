"""The compile report: one row per pass, printable as a table and serialisable to JSON."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from .fileio import write_text_atomic


@dataclass(frozen=True)
class Refusal:
    """A rewrite a pass matched but refused, and why."""

    node: str
    reason: str


@dataclass
class PassRow:
    """What one pass did. Errors are measured against the original eager model.

    ``max_rel_err`` is ``max|y - y_ref| / max|y_ref|`` over all outputs: normalised by the
    reference's largest magnitude, so near-zero elements do not make it meaningless.
    """

    name: str
    seconds: float = 0.0
    modified: bool = False
    matches: int = 0
    params: int = 0
    macs: int = 0
    nodes: int = 0
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    tolerance: float | None = None
    refusals: list[Refusal] = field(default_factory=list)
    details: list[dict] = field(default_factory=list)  # per-layer rows of lossy passes
    summary: dict | None = None  # the pass's decision as a whole (the budget pass: plan, totals, accuracy)


@dataclass
class CompileReport:
    model: str = ""
    rows: list[PassRow] = field(default_factory=list)
    auto_leaves: list[dict] = field(default_factory=list)  # {path, reason}: submodules kept whole
    canonical: dict | None = None  # what canonicalisation folded (compiler.canonical.Canonical)
    target: str = "torch"
    export: dict | None = None  # ONNX export: path, opset, parity errors
    backend: dict | None = None  # what the target backend reports (OpenCL: steps, fallbacks, peak memory)
    finetune: dict | None = None  # distillation fine-tuning after the passes: per-epoch history, best epoch
    # on val_data: the original's, after the passes and after fine-tuning ({kl, agreement, accuracy} each)
    accuracy: dict | None = None
    warnings: list[str] = field(default_factory=list)
    # outlines of the graph before and after the passes, for the HTML report's drawings (compiler.sketch)
    graphs: dict | None = None

    def row(self, name: str) -> PassRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no pass '{name}' in this report; passes: {[r.name for r in self.rows]}")

    def idle(self) -> dict[str, int]:
        """The rewrites that matched nothing (cleanup aside), each with its number of refusals."""
        return {r.name: len(r.refusals) for r in self.rows[1:] if r.matches == 0 and r.name != "cleanup"}

    def canonical_changed(self) -> bool:
        """Whether canonicalisation folded, removed or bound anything (then its summary is worth printing)."""
        c = self.canonical or {}
        return bool(c.get("folded") or c.get("asserts_removed") or c.get("bound_arguments") or c.get("batch_folded"))

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, self.to_json() + "\n")

    def to_html(self) -> str:
        """One self-contained page: tables, the Pareto plot of a budget or search, graph drawings."""
        from .report_html import render

        return render(self)

    def save_html(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, self.to_html())

    def __str__(self) -> str:
        head = ["pass", "time s", "changed", "matches", "params", "MACs", "nodes", "max abs err", "max rel err"]
        body = [
            [
                r.name,
                f"{r.seconds:.3f}",
                "yes" if r.modified else "-",
                str(r.matches),
                f"{r.params:,}",
                _si(r.macs),
                str(r.nodes),
                _sci(r.max_abs_err),
                _sci(r.max_rel_err),
            ]
            for r in self.rows
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
        lines = [f"fxcompress report: {self.model} -> target {self.target}", fmt(head), fmt(["-" * w for w in widths])]
        lines += [fmt(b) for b in body]
        idle = self.idle()
        if idle:  # a rewrite that did nothing says so here, not only in its per-node refusals
            lines.append("  matched nothing: " + ", ".join(
                f"{n} ({k} refused, see below)" if k else f"{n} (no candidate in this graph)" for n, k in idle.items()))
        if self.canonical_changed():
            lines.append(f"  canonical graph: {self.canonical['summary']}")
        for r in self.rows:
            if r.summary:
                lines += ["", *summary_lines(r.name, r.summary)]
            if r.details:
                lines += ["", f"{r.name}: per layer", *layer_table(r.details), ""]
        for leaf in self.auto_leaves:
            lines.append(f"  kept whole (untraceable): {leaf['path']}: {leaf['reason']}")
        for r in self.rows:
            for ref in r.refusals:
                lines.append(f"  {r.name} refused {ref.node}: {ref.reason}")
        if self.export:
            e = self.export
            lines.append(
                f"  onnx: {e['path']} (opset {e['opset']}), onnxruntime parity: "
                f"max abs err {_sci(e['max_abs_err'])}, max rel err {_sci(e['max_rel_err'])}"
            )
        if self.accuracy:
            a = self.accuracy
            stages = [(k, a[k]) for k in ("original", "compressed", "recovered") if k in a]
            key = "accuracy" if "accuracy" in a["original"] else "agreement"
            lines.append(f"  {key} on {a['images']} validation images: " + ", ".join(
                f"{k} {100 * m[key]:.2f}%" for k, m in stages))
            for st in a.get("stages", ()):
                lines.append(f"    after {st['after']}: " + ", ".join(
                    f"{k} {100 * st[k][key]:.2f}%" for k in ("compressed", "recovered") if k in st))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def summary_lines(name: str, summary: dict) -> list[str]:
    """A pass's decision in a few lines: its scalar entries, and before -> after of the dicts that
    have both (the budget pass's predicted and measured totals, its accuracy)."""
    lines = [f"{name}: summary"]
    b, a = summary.get("before"), summary.get("after")
    if isinstance(b, dict) and isinstance(a, dict):  # the plan's totals, predicted
        lines.append("  predicted: " + ", ".join(f"{q} {_cell(b[q])} -> {_cell(a[q])}" for q in b if q in a))
    for k, v in summary.items():
        if k in ("before", "after") and isinstance(b, dict) and isinstance(a, dict):
            continue
        if isinstance(v, dict) and "before" in v and "after" in v:
            b, a = v["before"], v["after"]
            if isinstance(b, dict):
                lines.append(f"  {k}: " + ", ".join(f"{q} {_cell(b[q])} -> {_cell(a.get(q))}" for q in b if q in a))
            else:
                lines.append(f"  {k}: {_cell(b)} -> {_cell(a)}" + "".join(
                    f", {q} {_cell(x)}" for q, x in v.items() if q not in ("before", "after")))
        elif isinstance(v, dict) and v and len(v) <= 6 and not any(isinstance(x, (dict, list)) for x in v.values()):
            lines.append(f"  {k}: " + ", ".join(f"{q} {_cell(x)}" for q, x in v.items()))
        elif isinstance(v, dict):
            lines.append(f"  {k}: {len(v)} entries" if v else f"  {k}: none")
        elif not isinstance(v, list):
            lines.append(f"  {k}: {_cell(v)}")
    return lines


def layer_table(details: list[dict]) -> list[str]:
    """Per-layer (or per-group) rows of a lossy pass, with totals of the before/after columns: one
    table per run of rows with the same columns (the budget pass's pruned groups, then its
    factorized layers)."""
    return [line for i, run in enumerate(layer_runs(details)) for line in ([""] if i else []) + _one_table(run)]


def layer_runs(details: list[dict]) -> list[list[dict]]:
    """``details`` split into runs of rows with the same columns, one table each."""
    runs: list[list[dict]] = []
    for d in details:
        if runs and list(runs[-1][0]) == list(d):
            runs[-1].append(d)
        else:
            runs.append([d])
    return runs


def layer_cells(details: list[dict], arrow: str = "->") -> tuple[list[str], list[list[str]]]:
    """The head and rows of one run of per-layer rows: ``x_before`` / ``x_after`` pairs become one
    ``before -> after`` column, and a last row totals them."""
    keys = list(details[0])
    pairs = [k[: -len("_before")] for k in keys if k.endswith("_before") and k[: -len("_before")] + "_after" in keys]
    plain = [k for k in keys if not any(k in (f"{p}_before", f"{p}_after") for p in pairs)]
    body = [[_cell(d[k]) for k in plain] + [f"{_cell(d[p + '_before'])} {arrow} {_cell(d[p + '_after'])}" for p in pairs]
            for d in details]
    totals = []
    for p in pairs:
        b, a = sum(d[p + "_before"] or 0 for d in details), sum(d[p + "_after"] or 0 for d in details)
        totals.append(f"{_cell(b)} {arrow} {_cell(a)} ({b / max(a, 1e-12):.2f}x)")
    body.append([f"total ({len(details)})"] + [""] * (len(plain) - 1) + totals)
    return plain + pairs, body


def _one_table(details: list[dict]) -> list[str]:
    head, body = layer_cells(details)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths]), *(fmt(b) for b in body)]


def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}" if v < 10**6 else _si(v)
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        text = "x".join(map(str, v)) if all(isinstance(x, int) for x in v) else ", ".join(map(str, v))
        return text if len(text) <= 40 else text[:37] + "..."
    return str(v)


def _si(x: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return str(x)


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"
