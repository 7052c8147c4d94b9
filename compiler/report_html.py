"""The compile report as one self-contained HTML page (``CompileReport.save_html``).

No scripts, no external files: the CSS is inline, the graph drawings are inline SVG drawn here from
the report's sketches (``compiler.sketch``), and the Pareto plot is an inline SVG from matplotlib.
The drawings are laid out by layers (networkx's topological generations, ordered by the mean
position of each node's inputs): Graphviz would lay them out better but is a system package and a
subprocess per block, and a block of a ResNet is small enough that layers read well.
"""
from __future__ import annotations

import html
import io
import re
from typing import TYPE_CHECKING

import networkx as nx

from .report import _cell, _si, _sci, layer_cells, layer_runs, summary_lines
from .sketch import blocks, block_prefixes

if TYPE_CHECKING:
    from .report import CompileReport

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1400px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{background:#fff6dd;border-left:4px solid #e0b000;padding:6px 10px;margin:8px 0}
.warn{background:#fde8e8;border-left:4px solid #d33;padding:6px 10px;margin:8px 0}
.pair{display:flex;gap:16px;align-items:flex-start;overflow-x:auto}
.pair>div{flex:0 0 auto}.pair h4{margin:4px 0;font-size:13px;color:#555}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}
svg text{font:11px monospace}
"""

KIND_COLOURS = [  # (substring of the label, fill)
    ("FusedOp", "#b9e4dc"), ("Conv", "#c9dcf5"), ("Linear", "#dccbf0"), ("BatchNorm", "#f7eab5"),
    ("Norm", "#f7eab5"), ("relu", "#cdebc5"), ("ReLU", "#cdebc5"), ("sigmoid", "#cdebc5"), ("gelu", "#cdebc5"),
    ("SiLU", "#cdebc5"), ("silu", "#cdebc5"), ("Pool", "#f6d2b0"), ("pool", "#f6d2b0"), ("add", "#e2e2e2"),
    ("input", "#ffffff"), ("output", "#ffffff"),
]


def render(report: CompileReport) -> str:
    """The page: summary, passes, per-layer tables, the Pareto plot, refusals, the graphs."""
    r = report
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fxcompress report: {_e(r.model)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>fxcompress report: {_e(r.model)} &rarr; target {_e(r.target)}</h1>", _headline(r)]
    parts += [f"<div class='warn'>warning: {_e(w)}</div>" for w in r.warnings]
    parts.append("<h2>Passes</h2>" + _pass_table(r))
    if r.accuracy:
        parts.append("<h2>Accuracy</h2>" + _accuracy(r.accuracy))
    if r.finetune:
        parts.append("<h2>Fine-tuning</h2>" + _finetune(r.finetune))
    for row in r.rows:
        if row.summary:
            lines = summary_lines(row.name, row.summary)
            parts.append(f"<h2>{_e(row.name)}: decision</h2><ul>" + "".join(f"<li>{_e(x.strip())}</li>" for x in lines[1:])
                         + "</ul>")
            plot = pareto_svg(row.summary)
            if plot:
                parts.append(f"<h3>{_e(row.name)}: Pareto plot</h3>{plot}")
        if row.details:
            parts.append(f"<h2>{_e(row.name)}: per layer</h2>" + "".join(_layer_table(run) for run in layer_runs(row.details)))
    parts.append("<h2>Refusals</h2>" + _refusals(r))
    if r.export or r.backend:
        parts.append("<h2>Deployment</h2>" + _deployment(r))
    if r.graphs:
        parts.append("<h2>Graph before and after</h2>" + graphs_html(r.graphs))
    parts.append("</body></html>")
    return "\n".join(parts)


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _table(head: list[str], body: list[list[str]]) -> str:
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in body) + "</table>")


def _headline(r: CompileReport) -> str:
    if not r.rows:
        return ""
    a, b = r.rows[0], r.rows[-1]
    items = [f"params {a.params:,} &rarr; {b.params:,} ({a.params / max(b.params, 1):.2f}x)",
             f"MACs {_si(a.macs)} &rarr; {_si(b.macs)} ({a.macs / max(b.macs, 1):.2f}x)",
             f"nodes {a.nodes} &rarr; {b.nodes}"]
    errs = [row.max_rel_err for row in r.rows if row.max_rel_err is not None]
    if errs:
        items.append(f"max relative output error against eager {_sci(max(errs))}")
    out = "<p>" + " &middot; ".join(items) + "</p>"
    idle = r.idle()
    if idle:
        out += "<div class='note'>matched nothing: " + ", ".join(
            f"{_e(n)} ({k} refused)" if k else f"{_e(n)} (no candidate in this graph)" for n, k in idle.items()) + "</div>"
    if r.canonical_changed():
        out += f"<p>canonical graph: {_e(r.canonical['summary'])}</p>"
    return out


def _pass_table(r: CompileReport) -> str:
    head = ["pass", "time s", "changed", "matches", "refused", "params", "MACs", "nodes", "max abs err", "max rel err",
            "tolerance"]
    return _table(head, [[x.name, f"{x.seconds:.3f}", "yes" if x.modified else "-", str(x.matches), str(len(x.refusals)),
                          f"{x.params:,}", _si(x.macs), str(x.nodes), _sci(x.max_abs_err), _sci(x.max_rel_err),
                          _sci(x.tolerance)] for x in r.rows])


def _layer_table(details: list[dict]) -> str:
    return _table(*layer_cells(details, arrow="→"))


def _accuracy(a: dict) -> str:
    stages = [k for k in ("original", "compressed", "recovered") if k in a]
    metrics = [m for m in ("accuracy", "agreement", "kl") if m in a["original"]]

    def cells(m: dict) -> list[str]:
        return [f"{m[q]:.4g}" if q == "kl" else f"{100 * m[q]:.2f}%" for q in metrics]

    body = [[k] + cells(a[k]) for k in stages]
    body += [[f"after {st['after']}: {k}"] + cells(st[k]) for st in a.get("stages", ()) for k in ("compressed", "recovered")
             if k in st]
    return f"<p>on {a['images']} validation images</p>" + _table(["model"] + metrics, body)


def _finetune(f: dict) -> str:
    hist = f.get("history") or []
    if not hist:
        return f"<p>{_e({k: v for k, v in f.items() if not isinstance(v, (list, dict))})}</p>"
    keys = [k for k in hist[0] if not isinstance(hist[0][k], (list, dict))]
    out = _table(keys, [[_cell(h.get(k)) for k in keys] for h in hist])
    extra = {k: v for k, v in f.items() if k != "history" and not isinstance(v, (list, dict))}
    return out + (f"<p>{_e(', '.join(f'{k}: {_cell(v)}' for k, v in extra.items()))}</p>" if extra else "")


def _refusals(r: CompileReport) -> str:
    body = [[x.name, ref.node, ref.reason] for x in r.rows for ref in x.refusals]
    body += [["trace (kept whole)", leaf["path"], leaf["reason"]] for leaf in r.auto_leaves]
    return _table(["pass", "node", "reason"], body) if body else "<p>none: every match was rewritten</p>"


def _deployment(r: CompileReport) -> str:
    out = ""
    if r.export:
        e = r.export
        out += (f"<p>ONNX: {_e(e.get('path'))} (opset {_e(e.get('opset'))}); onnxruntime against eager: max abs err "
                f"{_sci(e.get('max_abs_err'))}, max rel err {_sci(e.get('max_rel_err'))}</p>")
    if r.backend:
        scalars = {k: v for k, v in r.backend.items() if not isinstance(v, (list, dict))}
        out += _table(["backend", "value"], [[k, _cell(v)] for k, v in scalars.items()])
    return out


# --- the Pareto plot -------------------------------------------------------------------------------

def pareto_points(summary: dict) -> dict[str, list[dict]]:
    """What a budget (or search) summary holds to plot, as series of ``{ms, error}`` points."""
    series: dict[str, list[dict]] = {}
    if summary.get("front"):
        series["the allocation at other latency limits"] = summary["front"]
    search = summary.get("search") or {}
    if search.get("pareto"):
        series["search's Pareto front"] = search["pareto"]
    uniform = summary.get("uniform") or {}
    if uniform.get("points"):
        series["plans weighed on calibration data (KL)"] = uniform["points"]
    return series


def pareto_svg(summary: dict) -> str:
    """Latency against error of the plans a budget pass weighed, the kept plan marked; "" if none."""
    series = pareto_points(summary)
    if not series:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    with plt.rc_context({"svg.fonttype": "none"}):  # text stays text: searchable, and a smaller page
        return _pareto_svg(plt, series, summary)


def _pareto_svg(plt, series: dict[str, list[dict]], summary: dict) -> str:
    fig, axes = plt.subplots(1, len(series), figsize=(5.2 * len(series), 3.8), squeeze=False)
    before = summary.get("before") or {}
    limit = (summary.get("limits") or {}).get("ms")
    for ax, (title, pts) in zip(axes[0], series.items()):
        pts = [p for p in pts if p.get("ms") is not None and p.get("error") is not None]
        ax.plot([p["ms"] for p in pts], [p["error"] for p in pts], "o" if "KL" in title else "o-", ms=4,
                color="#4477aa", label="plans")
        missed = [p for p in pts if p.get("within_limits") is False]
        if missed:
            ax.plot([p["ms"] for p in missed], [p["error"] for p in missed], "o", ms=7, mfc="white", color="#4477aa",
                    label="misses a limit of the budget")
        kept = [p for p in pts if p.get("kept")]
        if kept:
            ax.plot([p["ms"] for p in kept], [p["error"] for p in kept], "*", ms=14, color="#cc3311", label="kept plan")
        if limit:
            ax.axvline(limit, ls="--", color="#888", label="latency limit")
        if before.get("ms"):
            ax.axvline(before["ms"], ls=":", color="#222", label="original")
        ax.set_xlabel("predicted latency ms")
        ax.set_ylabel("calibration KL" if "KL" in title else (summary.get("sensitivity") or "error").split(" on ")[0].split(" (")[0])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    return re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg"):], flags=re.S)


# --- graph drawings --------------------------------------------------------------------------------

def graphs_html(graphs: dict) -> str:
    """Per block of the graph before the passes, its drawing before and after, side by side."""
    before, after = graphs.get("before"), graphs.get("after")
    if not before:
        return ""
    b_nodes = {n["name"]: n for n in before["nodes"]}
    a_nodes = {n["name"]: n for n in after["nodes"]} if after else {}
    part_of = {p: i for i, blk in enumerate(before["blocks"]) for p in blk.get("parts", [blk["name"]])}
    after_groups: dict[int, list[str]] = {}
    if after:
        for run in blocks(after["nodes"], prefixes=block_prefixes(before)):
            i = part_of.get(run["name"], len(before["blocks"]))
            after_groups.setdefault(i, []).extend(run["nodes"])
    old = {(n["name"], n["label"]) for n in before["nodes"]}
    out = [f"<p>{len(before['nodes'])} nodes before, {len(after['nodes']) if after else '?'} after, in "
           f"{len(before['blocks'])} blocks; nodes the passes changed or added are outlined in red.</p>"]
    for i, blk in enumerate(before["blocks"]):
        if blk["name"] in ("input", "output"):  # drawn as the stubs of the blocks that read them
            continue
        names_after = after_groups.get(i, [])
        changed = [a_nodes[n] for n in names_after if (n, a_nodes[n]["label"]) not in old]
        gone = len(blk["nodes"]) - sum(1 for n in blk["nodes"] if n in a_nodes)
        note = f" ({len(blk['nodes'])} nodes &rarr; {len(names_after)}" + (f", {len(changed)} changed or new" if changed else "") \
            + (f", {gone} removed" if gone else "") + ")" if after else ""
        out.append(f"<details open><summary>{_e(blk['name'])}{note}</summary><div class='pair'>"
                   f"<div><h4>before</h4>{block_svg([b_nodes[n] for n in blk['nodes']])}</div>")
        if after:
            out.append(f"<div><h4>after</h4>{block_svg([a_nodes[n] for n in names_after], old)}</div>")
        out.append("</div></details>")
    rest = [n for n in after_groups.get(len(before["blocks"]), []) if a_nodes[n]["op"] not in ("placeholder", "output")]
    if rest:
        out.append(f"<details open><summary>outside the original blocks ({len(rest)} nodes)</summary>"
                   f"{block_svg([a_nodes[n] for n in rest], old)}</details>")
    return "\n".join(out)


def block_svg(nodes: list[dict], old: set | None = None) -> str:
    """One block drawn top to bottom: its nodes by layer, inputs from outside it as grey stubs."""
    if not nodes:
        return "<p><i>(empty)</i></p>"
    inside = {n["name"] for n in nodes}
    g = nx.DiGraph()
    for n in nodes:
        g.add_node(n["name"], label=n["label"], ext=False, changed=old is not None and (n["name"], n["label"]) not in old)
        for i in n["inputs"]:
            if i not in inside:
                g.add_node(i, label=f"from {i}", ext=True, changed=False)
            g.add_edge(i, n["name"])
    order = {v: i for i, v in enumerate(g.nodes)}
    layers = [sorted(layer, key=order.__getitem__) for layer in nx.topological_generations(g)]
    box_h, row_h, gap, char_w = 20, 40, 12, 6.7
    width = {v: len(g.nodes[v]["label"]) * char_w + 14 for v in g}
    pos: dict[str, tuple[float, float]] = {}
    for depth, layer in enumerate(layers):  # order each layer by the mean x of its inputs (one sweep)
        if depth:
            layer.sort(key=lambda v: sum(pos[u][0] for u in g.predecessors(v)) / max(1, g.in_degree(v)))
        x = 0.0
        for v in layer:
            pos[v] = (x + width[v] / 2, depth * row_h + 10)
            x += width[v] + gap
    total_w = max(sum(width[v] for v in layer) + gap * (len(layer) - 1) for layer in layers)
    for layer in layers:  # centre every layer
        w = sum(width[v] for v in layer) + gap * (len(layer) - 1)
        for v in layer:
            pos[v] = (pos[v][0] + (total_w - w) / 2, pos[v][1])
    h = len(layers) * row_h
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{total_w + 4:.0f}' height='{h:.0f}' "
           f"viewBox='-2 0 {total_w + 4:.0f} {h:.0f}'><defs><marker id='a' viewBox='0 0 8 8' refX='8' refY='4' "
           "markerWidth='6' markerHeight='6' orient='auto'><path d='M0,0 L8,4 L0,8 z' fill='#777'/></marker></defs>"]
    for u, v in g.edges:
        (x1, y1), (x2, y2) = pos[u], pos[v]
        svg.append(f"<line x1='{x1:.1f}' y1='{y1 + box_h:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' stroke='#777' "
                   "marker-end='url(#a)'/>")
    for v, (x, y) in pos.items():
        d = g.nodes[v]
        fill = "#f2f2f2" if d["ext"] else next((c for k, c in KIND_COLOURS if k in d["label"]), "#eeeeee")
        stroke = "#d22" if d["changed"] else "#999" if d["ext"] else "#555"
        dash = " stroke-dasharray='3,2'" if d["ext"] else ""
        svg.append(f"<g><title>{_e(v)}</title><rect x='{x - width[v] / 2:.1f}' y='{y:.1f}' width='{width[v]:.1f}' "
                   f"height='{box_h}' rx='4' fill='{fill}' stroke='{stroke}' stroke-width='{2 if d['changed'] else 1}'"
                   f"{dash}/><text x='{x:.1f}' y='{y + 14:.1f}' text-anchor='middle'>{_e(d['label'])}</text></g>")
    svg.append("</svg>")
    return "".join(svg)
