"""Pipelines: named defaults, Python lists and TOML files, all resolved to a list of Pass objects.

A TOML pipeline is data, never code::

    [[pass]]
    name = "fold_bn"

    [[pass]]
    name = "factorize"
    method = "tucker2"
    rank = 0.25
"""
from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

from .errors import CompilerError, PipelineError, choices

if TYPE_CHECKING:
    from .pass_base import Pass

PipelineSpec = Union[str, os.PathLike, Sequence[Union["Pass", str, Mapping]]]

NAMED_PIPELINES: dict[str, list[dict]] = {
    "default": [{"name": "cleanup"}, {"name": "fold_bn"}, {"name": "fuse"}],
    "none": [],
}


def load_pipeline(spec: PipelineSpec) -> list["Pass"]:
    """Resolve a pipeline spec to Pass objects.

    ``spec`` is a named pipeline (``"default"``), a path to a ``.toml`` file, or a sequence whose items
    are Pass objects, pass names, or ``{"name": ..., **arguments}`` mappings.
    """
    from .pass_base import Pass

    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text in NAMED_PIPELINES:
            return [build_pass(d, where=f"pipeline '{text}'") for d in NAMED_PIPELINES[text]]
        if text.endswith(".toml") or os.path.exists(text):
            return load_toml(text)
        raise PipelineError(
            f"pipeline '{text}' is neither a named pipeline {choices(NAMED_PIPELINES)} nor a .toml file"
        )
    if not isinstance(spec, Sequence):
        raise PipelineError(f"pipeline must be a name, a .toml path or a list of passes, got {type(spec).__name__}")
    out = []
    for i, item in enumerate(spec):
        if isinstance(item, Pass):
            out.append(item)
        elif isinstance(item, str):
            out.append(build_pass({"name": item}, where=f"pipeline item {i}"))
        elif isinstance(item, Mapping):
            out.append(build_pass(item, where=f"pipeline item {i}"))
        else:
            raise PipelineError(f"pipeline item {i} is a {type(item).__name__}; expected a Pass, a pass name or a mapping")
    return out


def load_toml(path: str | os.PathLike) -> list["Pass"]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"pipeline file '{path}' does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"pipeline file '{path}' is not valid TOML: {e}") from e
    extra = set(data) - {"pass"}
    if extra:
        raise PipelineError(f"pipeline file '{path}': unknown top-level keys {sorted(extra)}; valid keys are ['pass'] ([[pass]] tables)")
    tables = data.get("pass", [])
    if not isinstance(tables, list):
        raise PipelineError(f"pipeline file '{path}': 'pass' must be an array of tables, written [[pass]]")
    return [build_pass(t, where=f"{path} [[pass]] #{i + 1}") for i, t in enumerate(tables)]


def build_pass(table: Mapping, *, where: str) -> "Pass":
    """Instantiate a registered pass from ``{"name": ..., **arguments}``, validating the arguments."""
    from .pass_base import get_pass

    if "name" not in table or not isinstance(table["name"], str):
        raise PipelineError(f"{where}: every pass needs a string 'name'")
    cls = get_pass(table["name"])
    args = {k: v for k, v in table.items() if k != "name"}
    valid = cls.arguments()
    unknown = set(args) - set(valid)
    if unknown:
        raise PipelineError(
            f"{where}: pass '{cls.name}' has no argument(s) {sorted(unknown)}; valid arguments are {choices(valid)}"
        )
    try:
        return cls(**args)
    except CompilerError:
        raise  # already typed and located by the pass
    except (TypeError, ValueError) as e:
        raise PipelineError(f"{where}: bad arguments for pass '{cls.name}': {e}") from e
