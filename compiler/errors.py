"""Typed errors. Every error carries the context a user needs: module path, node, pass, valid choices."""
from __future__ import annotations

from collections.abc import Iterable


class CompilerError(Exception):
    """Base class of every error fxcompress raises on purpose."""


class InputError(CompilerError, TypeError):
    """The model or the example inputs are not what the compiler can work with."""


class TraceError(CompilerError):
    """torch.fx could not trace the model, even with the failing submodules as leaves.

    Attributes
    ----------
    module_path : str
        Dotted path of the innermost submodule being traced ("" for the root).
    source_line : str | None
        ``file:line: code`` of the user's line that failed, when it could be found.
    """

    def __init__(self, message: str, *, module_path: str = "", source_line: str | None = None):
        where = f"module '{module_path or '<root>'}'"
        if source_line:
            where += f" at {source_line}"
        super().__init__(f"{message} (in {where})")
        self.module_path = module_path
        self.source_line = source_line


class PipelineError(CompilerError, ValueError):
    """A pipeline specification (list, name or TOML file) is malformed."""


class UnknownPassError(PipelineError, KeyError):
    """A pipeline names a pass that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class PassError(CompilerError):
    """A pass failed. The message names the pass and the passes that ran before it."""

    def __init__(self, pass_name: str, before: list[str], cause: BaseException):
        super().__init__(
            f"An error occurred when running the '{pass_name}' pass after the following passes: "
            f"{before}: {type(cause).__name__}: {cause}"
        )
        self.pass_name = pass_name
        self.passes_before = before


class PreconditionError(CompilerError):
    """A pass's ``requires`` check failed."""


class PostconditionError(CompilerError):
    """A pass's ``ensures`` check failed."""


class VerificationError(CompilerError):
    """A pass changed the model's outputs by more than its tolerance."""


class ExportError(CompilerError):
    """ONNX export, checking or the onnxruntime parity check failed."""


class OutputPathError(CompilerError, OSError):
    """An output file cannot be written where the user asked."""


def choices(names: Iterable[str]) -> str:
    """Format valid choices for an error message: ``['a', 'b']``."""
    return "[" + ", ".join(repr(n) for n in sorted(names)) + "]"


class RankError(PipelineError):
    """A rank specification is invalid, or invalid for a given layer (named in the message)."""


class FactorizationError(CompilerError):
    """A layer cannot be factorized (for example NaN or inf weights); names the layer."""


class PruningError(PipelineError):
    """A pruning request cannot be carried out: it would empty a layer or a piece, or a plan does not fit."""


class DatasetError(CompilerError):
    """A data set's files are missing or malformed; names the files and the package that installs them."""


class FineTuneError(CompilerError, ValueError):
    """A fine-tuning request cannot be carried out: a bad option (valid choices listed) or data that does not fit."""


class CalibrationError(CompilerError):
    """A cost-model calibration profile cannot be used: missing, malformed, made on another device, or
    stale (the kernels changed since); says how to recalibrate."""


class BudgetError(CompilerError, ValueError):
    """A compression budget is malformed, or no choice of the candidates meets it (the message gives
    the closest achievable)."""
