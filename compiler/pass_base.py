"""The pass contract and the pass registry.

A pass is a small named class::

    class FoldBN(Pass, name="fold_bn"):
        def run(self, gm, ctx) -> PassResult: ...

Declaring the class registers it; pipelines (Python or TOML) refer to it by name. Its arguments
are the keyword-only parameters of ``__init__``, which is what ``fxcompress passes`` lists and what a
TOML ``[[pass]]`` table may set.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
import torch.fx as fx

from .analysis import Analyses
from .errors import PostconditionError, UnknownPassError, choices
from .report import Refusal

# Exact rewrites only reorder float arithmetic; they must stay this close to eager.
EXACT_TOLERANCE = 1e-5

_REGISTRY: dict[str, type["Pass"]] = {}

class DeviceRun(Protocol):
    """``gm`` prepared on the device: calling it runs it once on the example inputs."""

    def __call__(self) -> object: ...

    def node_ms(self, repeats: int = 5) -> dict[str, float]:
        """Median milliseconds per graph node over ``repeats`` runs, each node synchronised on its own
        (so they add up to more than a run's wall time)."""
        ...


# What a pass that times graphs on the device is given: ``device(gm, example_inputs)`` prepares ``gm``
# to run there and returns a ``DeviceRun``. The facade (``compiler.compile``) wires the OpenCL
# runtime's (``runtime.device_runner``); passes never import the runtime.
DeviceRunner = Callable[[fx.GraphModule, tuple[torch.Tensor, ...]], DeviceRun]


@dataclass
class PassResult:
    """What ``Pass.run`` returns: whether it modified the graph, and what it matched or refused."""

    modified: bool
    matches: int = 0
    refusals: list[Refusal] = field(default_factory=list)
    details: list[dict] = field(default_factory=list)  # per-layer rows of lossy passes
    summary: dict | None = None  # what the pass decided as a whole (the budget pass: its plan and totals)
    warnings: list[str] = field(default_factory=list)


@dataclass
class PassContext:
    """What a pass may use besides the graph: example inputs, the cached analyses, and the device
    runner (``DeviceRunner``; None when nothing wired one: such a pass then does not time)."""

    example_inputs: tuple[torch.Tensor, ...]
    analyses: Analyses
    passes_before: list[str] = field(default_factory=list)
    device: DeviceRunner | None = None


class Pass:
    """Base class of graph rewrites. Subclass with ``class X(Pass, name="x")`` to register."""

    name: ClassVar[str] = ""
    # Relative output error this pass may introduce (see PassRow.max_rel_err). Lossy passes take a
    # ``tolerance`` argument and set it per instance.
    tolerance: float = EXACT_TOLERANCE
    # Analyses still valid after this pass modified the graph.
    preserves: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, *, name: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if name is not None:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise ValueError(f"pass name '{name}' is already registered by {_REGISTRY[name].__qualname__}")
            cls.name = name
            _REGISTRY[name] = cls

    def requires(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        """Raise ``PreconditionError`` if the graph is not what this pass needs."""

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def ensures(self, gm: fx.GraphModule, ctx: PassContext) -> None:
        """Raise ``PostconditionError`` if the pass left the graph inconsistent."""
        try:
            gm.graph.lint()
        except Exception as e:  # noqa: BLE001
            raise PostconditionError(f"graph is malformed after '{self.name}': {e}") from e

    @classmethod
    def arguments(cls) -> dict[str, inspect.Parameter]:
        """The pass's arguments: keyword parameters of ``__init__``."""
        sig = inspect.signature(cls.__init__)
        return {k: p for k, p in sig.parameters.items() if k != "self" and p.kind is not p.VAR_KEYWORD}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.arguments() if hasattr(self, k))
        return f"{type(self).__name__}({args})"


def registered_passes() -> dict[str, type[Pass]]:
    """All registered passes by name (built-in ones are loaded on first use)."""
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    passes = registered_passes()
    if name not in passes:
        raise UnknownPassError(f"unknown pass '{name}', registered passes are {choices(passes)}")
    return passes[name]


def _load_builtin_passes() -> None:
    # The built-in rewrites live in the top-level ``passes`` package, which builds on this module;
    # importing it registers them. Done lazily so ``compiler`` core never imports ``passes`` at load.
    import passes  # noqa: F401
