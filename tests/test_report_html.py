"""The HTML compile report: its tables, the Pareto plot of a budget, the graph drawings, rendered in
headless Chromium (Debian ``chromium``, which ``make test`` installs)."""
import html
import re
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from torch import fx

import compiler
from compiler import zoo
from compiler.report import _cell
from compiler.sketch import block_prefixes, blocks, sketch

from .test_budget import CPU

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def resnet18_budget(tmp_path_factory):
    """A budget compile of ResNet-18 (offline CPU target: planned, not timed) and its page."""
    tv = zoo.import_torchvision()
    torch.manual_seed(0)
    model = zoo.randomize(tv.models.resnet18(weights=None))
    cm = compiler.compile(model, torch.randn(1, 3, 32, 32), pipeline=[
        "cleanup", "fold_bn", {"name": "budget", "budget": {"latency_ratio": 0.6}, "target": CPU, "ranks": [0.25, 0.5]}, "fuse"])
    path = tmp_path_factory.mktemp("report") / "report.html"
    cm.report.save_html(path)
    return cm, path


def test_the_page_has_every_table_the_plot_and_a_drawing_per_block(resnet18_budget):
    cm, path = resnet18_budget
    page = path.read_text()
    assert not re.search(r"<script|<link|<img|src=|url\(http", page)  # self-contained: nothing fetched
    for heading in ("Passes", "budget: decision", "budget: Pareto plot", "budget: per layer", "Refusals",
                    "Graph before and after"):
        assert f">{heading}</h" in page, heading
    rows = re.findall(r"<tr><td>(\w+)</td>", page.split("budget: decision")[0])
    assert rows[:5] == ["trace", "cleanup", "fold_bn", "budget", "fuse"]  # the per-pass table, in order
    budget = cm.report.row("budget")
    for d in budget.details:  # every layer or group the plan changed has its row
        assert f"<td>{html.escape(_cell(d.get('layer', d.get('layers'))))}</td>" in page
    for r in budget.refusals:
        assert f"<td>{r.node}</td>" in page
    pts = budget.summary["front"]  # the allocation at other limits, applied and scored like the kept plan
    assert sum(p["kept"] for p in pts) == 1 and len(pts) >= 4 and [p["ms"] for p in pts] == sorted(p["ms"] for p in pts)
    assert pts[-1]["error"] == pytest.approx(0, abs=1e-5)  # at the original's latency: every layer kept
    kept = next(p for p in pts if p["kept"])
    assert kept["params"] == budget.params and kept["error"] == pytest.approx(budget.summary["output_rel_err"])
    assert page.count("<svg") >= 1 + len([b for b in cm.report.graphs["before"]["blocks"]
                                          if b["name"] not in ("input", "output")])
    for name in ("conv1 .. maxpool", "layer1", "layer4", "avgpool .. fc"):  # ResNet-18: one drawing per stage
        assert f"<summary>{name} (" in page


def test_after_the_passes_every_node_is_drawn_once_in_the_blocks_of_before():
    tv = zoo.import_torchvision()
    model = zoo.randomize(tv.models.resnet50(weights=None))
    cm = compiler.compile(model, torch.randn(1, 3, 64, 64))
    before, after = cm.report.graphs["before"], cm.report.graphs["after"]
    names = [b["name"] for b in before["blocks"]]
    assert names[:3] == ["input", "conv1 .. maxpool", "layer1.0"] and names[-2:] == ["avgpool .. fc", "output"]
    assert sum(n.startswith("layer") for n in names) == 16  # one drawing per bottleneck, readable at ResNet-50's size
    assert max(len(b["nodes"]) for b in before["blocks"]) <= 30
    runs = blocks(after["nodes"], prefixes=block_prefixes(before))
    drawn = [n for r in runs for n in r["nodes"]]
    assert sorted(drawn) == sorted(n["name"] for n in after["nodes"]) and len(drawn) == len(set(drawn))
    assert {r["name"] for r in runs} <= set(block_prefixes(before)) | {"input", "output"}


def test_a_sketch_labels_layers_by_shape_and_follows_functional_calls_into_their_module():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 16, 3, stride=2, groups=2)

        def forward(self, x):
            return torch.relu(self.conv(x))

    net = torch.nn.Sequential(Block(), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.randn(1, 8, 9, 9))
    sk = sketch(fx.symbolic_trace(net))
    by_name = {n["name"]: n for n in sk["nodes"]}
    conv = next(n for n in sk["nodes"] if n["label"].startswith("Conv2d"))
    assert conv["label"] == "Conv2d 3x3 8>16 /2 g2" and conv["path"] == "0.conv"
    relu = next(n for n in sk["nodes"] if n["label"] == "relu")
    assert relu["path"] == "0" and relu["inputs"] == [conv["name"]]
    assert by_name["output"]["label"] == "output"
    assert any(n["label"] == "Linear 256>4" for n in sk["nodes"])


def test_the_cli_writes_html_when_the_report_name_says_so(tmp_path):
    factory = tmp_path / "net.py"
    factory.write_text("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), "
                       "torch.nn.BatchNorm2d(8), torch.nn.ReLU())\n")
    out = tmp_path / "r.html"
    proc = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", f"{factory}:make", "--input-shape", "1,3,16,16",
                           "--report", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert page.startswith("<!doctype html>") and ">Passes</h2>" in page and "fold_bn" in page


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (make test installs it: "
                                              "apt-get install chromium)")
def test_the_page_renders_in_headless_chromium(resnet18_budget, tmp_path):
    _, path = resnet18_budget
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'u'}"]
    dom = subprocess.run(flags + ["--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for text in ("fxcompress report: ResNet", "budget: per layer", "budget: Pareto plot", "layer4", "Refusals", "kept plan"):
        assert text in dom.stdout, text
    shot = tmp_path / "page.png"
    run = subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1400,3000", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    assert _png_size(shot.read_bytes()) == (1400, 3000)
    from matplotlib.image import imread

    pixels = imread(shot)
    drawn = (pixels[..., :3] < 0.9).any(axis=-1).mean()  # not a blank page: tables, plot and drawings are ink
    assert 0.02 < drawn < 0.9, drawn


def test_small_blocks_merge_only_within_one_module():
    """A stem's or a head's small siblings share a drawing; the tail of one transformer block and the
    head of the next do not (timm ViT: ``blocks.0.ls1 .. blocks.0``, then ``blocks.1.norm1``)."""
    paths = ["conv1", "bn1", "relu"]
    for b in (0, 1):  # 32 nodes a block: over MAX_BLOCK, so drawn by its children
        paths += [f"blocks.{b}.norm1"] + [f"blocks.{b}.attn"] * 24 + [f"blocks.{b}.ls1"] + [f"blocks.{b}.mlp"] * 5 + [f"blocks.{b}"]
    nodes = [{"name": f"n{i}", "op": "call_module", "label": p, "path": p, "inputs": []} for i, p in enumerate(paths)]
    names = [b["name"] for b in blocks(nodes)]
    assert names == ["conv1 .. relu", "blocks.0.norm1", "blocks.0.attn", "blocks.0.ls1 .. blocks.0",
                     "blocks.1.norm1", "blocks.1.attn", "blocks.1.ls1 .. blocks.1"]
