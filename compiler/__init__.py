"""fxcompress: a model-compression compiler over torch.fx graphs.

    import compiler
    cm = compiler.compile(model, x)             # trace, cleanup, fold_bn, fuse; verified against eager
    print(cm.report)
    cm.export_onnx("model.onnx")
"""
from .compat import patch_torchvision

patch_torchvision()  # before any user code imports torchvision or timm

from .api import CompiledModel, compile
from .budget import Budget, Plan
from .errors import (
    BudgetError, CalibrationError, CompilerError, DatasetError, ExportError, FineTuneError, InputError, OutputPathError, PassError, PipelineError,
    PostconditionError, PreconditionError, PruningError, TraceError, UnknownPassError, VerificationError,
)
from .finetune import FineTune, FineTuneResult, finetune
from .pass_base import EXACT_TOLERANCE, Pass, PassContext, PassResult, get_pass, registered_passes
from .pass_manager import PassManager
from .pipelines import NAMED_PIPELINES, load_pipeline
from .report import CompileReport, PassRow, Refusal
from .trace import trace

__all__ = [
    "compile", "trace", "CompiledModel", "PassManager", "Pass", "PassContext", "PassResult", "EXACT_TOLERANCE",
    "get_pass", "registered_passes", "load_pipeline", "NAMED_PIPELINES", "CompileReport", "PassRow", "Refusal",
    "CompilerError", "InputError", "TraceError", "PipelineError", "UnknownPassError", "PassError",
    "PreconditionError", "PostconditionError", "VerificationError", "ExportError", "OutputPathError",
    "PruningError", "DatasetError", "FineTuneError", "FineTune", "FineTuneResult", "finetune",
    "Budget", "Plan", "BudgetError", "CalibrationError",
]
