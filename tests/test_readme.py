"""The README's Python examples run as written, so they cannot rot: each ```python block is executed
in order with ``model`` a randomised ResNet-18 and ``x`` an example input, as the README says."""
import re
from pathlib import Path

import pytest
import torch

from compiler import zoo

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_an_example_for_each_way_to_use_it():
    text = "\n".join(BLOCKS)
    assert len(BLOCKS) >= 3
    for needle in ("compiler.compile(", "compiler.PassManager(", "export_onnx(", 'backend="fxcompress"'):
        assert needle in text, needle


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, tmp_path, monkeypatch):
    torch._dynamo.reset()
    monkeypatch.chdir(tmp_path)  # files the examples write land here
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    model, x = zoo.build("resnet18")
    env = {"model": model, "x": x}
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), env)  # noqa: S102 - our own README
