"""Budgets and plans: what a user asks compression to reach, and the per-layer decisions that reach it.

A ``Budget`` bounds predicted latency (absolute, or as a fraction of the original's), parameters,
MACs and the output error the plan may add. The ``budget`` pass (``passes/budget.py``) turns it into a
``Plan``: per layer, keep it or factorize it with a method and a rank; per channel group, prune it
by a ratio. A plan is data - JSON, written atomically - and replays on the original model as an
ordinary pipeline (``Plan.pipeline()``), so a decision made once (or on another machine) is applied
without searching again.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import BudgetError
from .fileio import write_text_atomic


def from_mapping(cls, d, what: str):
    """``cls(**d)`` for a dataclass ``cls`` (``d`` itself if it already is one); keys it does not have
    are a BudgetError naming the valid ones."""
    if isinstance(d, cls):
        return d
    known = {f.name for f in fields(cls)}
    bad = sorted(set(d) - known)
    if bad:
        raise BudgetError(f"unknown {what} keys {bad}, valid keys are {sorted(known)}")
    return cls(**d)


@dataclass(frozen=True)
class Budget:
    """Upper bounds; None leaves a resource free. ``latency_ratio`` is relative to the original
    model's predicted latency (0.5: twice as fast), ``latency_ms`` absolute. ``max_output_error`` is
    the largest relative output error (max |y - y_ref| / max |y_ref| on the example inputs) the
    compressed model may show."""

    latency_ms: float | None = None
    latency_ratio: float | None = None
    params: int | None = None
    macs: int | None = None
    max_output_error: float | None = None

    def __post_init__(self):
        for f in fields(self):
            name, v = f.name, getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
                raise BudgetError(f"Budget.{name} must be a positive number or None, got {v!r}")
        if self.latency_ratio is not None and self.latency_ratio > 1:
            raise BudgetError(f"Budget.latency_ratio is a fraction of the original latency, at most 1; got {self.latency_ratio}")
        if self.latency_ms is not None and self.latency_ratio is not None:
            raise BudgetError("give Budget.latency_ms or Budget.latency_ratio, not both")
        if all(getattr(self, f) is None for f in ("latency_ms", "latency_ratio", "params", "macs")):
            raise BudgetError("a Budget needs at least one of latency_ms, latency_ratio, params, macs")

    def latency_goal(self, original_ms: float) -> float | None:
        """The latency limit for an original that takes ``original_ms`` (predicted or measured)."""
        return self.latency_ms if self.latency_ms is not None else (
            self.latency_ratio * original_ms if self.latency_ratio is not None else None)

    @classmethod
    def from_dict(cls, d: dict | Budget) -> Budget:
        return from_mapping(cls, d, "budget")


PRUNE_ROUND_TO = 8  # a plan's pruned channel counts are multiples of this: the OpenCL kernels' vectors stay full


@dataclass
class Plan:
    """Decisions: ``layers[path] = {"method": ..., "rank": ...}`` (layers not listed are kept), and
    ``prune[path] = ratio`` for the channel group of the layer at ``path`` (prune_channels' overrides)."""

    layers: dict[str, dict] = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    predicted: dict = field(default_factory=dict)  # before/after: latency_ms, params, macs, error proxy
    prune: dict[str, float] = field(default_factory=dict)
    # a progressive plan's earlier stages, in order, each {"layers": ..., "prune": ...} on the model as
    # the stage before left it; this plan's own layers and prune are its last stage
    stages: list[dict] = field(default_factory=list)

    def pipeline(self) -> list[dict]:
        """The passes that apply this plan: per stage, one prune_channels pass for the pruned groups
        (first: a rank is a fraction of what pruning leaves), then one factorize pass per method,
        each touching only its layers."""
        return [p for st in (*self.stages, {"layers": self.layers, "prune": self.prune}) for p in _stage_passes(**st)]

    def to_json(self) -> str:
        return json.dumps({"version": 1, **asdict(self)}, indent=1, sort_keys=True)

    def save(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise BudgetError(f"cannot read plan '{path}': {e}") from e
        if not isinstance(d, dict) or d.get("version") != 1 or not isinstance(d.get("layers"), dict):
            raise BudgetError(f"'{path}' is not a version-1 fxcompress plan")
        stages = d.get("stages", [])
        if not isinstance(stages, list) or not all(isinstance(st, dict) and set(st) == {"layers", "prune"} for st in stages):
            raise BudgetError(f"plan '{path}': stages must be a list of {{'layers': ..., 'prune': ...}}")
        for where, st in [(f"stages[{i}]", st) for i, st in enumerate(stages)] + [("", d)]:
            _check_stage(st.get("layers"), st.get("prune", {}), f"plan '{path}'" + (f" {where}" if where else ""))
        return cls(layers=d["layers"], budget=d.get("budget", {}), predicted=d.get("predicted", {}),
                   prune=d.get("prune", {}), stages=stages)


def _check_stage(layers, prune, where: str) -> None:
    if not isinstance(layers, dict):
        raise BudgetError(f"{where}: layers must be a table of layer paths")
    for p, c in layers.items():
        if not isinstance(c, dict) or set(c) != {"method", "rank"}:
            raise BudgetError(f"{where}: layer '{p}' must be {{'method': ..., 'rank': ...}}, got {c!r}")
    for p, r in (prune.items() if isinstance(prune, dict) else [("prune", prune)]):
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1:
            raise BudgetError(f"{where}: prune['{p}'] must be a ratio in (0, 1), got {r!r}")


def _stage_passes(layers: dict[str, dict], prune: dict[str, float]) -> list[dict]:
    out = [{"name": "prune_channels", "ratio": 0.0, "overrides": dict(sorted(prune.items())),
            "round_to": PRUNE_ROUND_TO}] if prune else []
    by_method: dict[str, dict[str, object]] = {}
    for path, choice in sorted(layers.items()):
        by_method.setdefault(choice["method"], {})[path] = choice["rank"]
    return out + [{"name": "factorize", "method": m, "overrides": {**paths, "*": "skip"}, "skip_first": False,
                   "skip_last": False} for m, paths in sorted(by_method.items())]
