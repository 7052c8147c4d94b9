"""``compile()``: trace, run a pipeline of passes, and hand the result to a backend."""
from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from .budget import Budget
from .calibration import Calibration
from .errors import BudgetError, ExportError, FineTuneError, InputError, PipelineError
from .finetune import FineTune, finetune as run_finetune
from .pass_manager import PassManager
from .pipelines import PipelineSpec, build_pass, load_pipeline
from .report import CompileReport
from .trace import LeafSpec, as_input_tuple, check_module, trace


class CompiledModel(nn.Module):
    """The compiled model: called like the original.

    Attributes
    ----------
    graph_module : torch.fx.GraphModule
        The rewritten graph (always runnable in eager PyTorch).
    report : CompileReport
        One row per pass; print it, or ``report.save("report.json")``.
    """

    def __init__(self, gm: fx.GraphModule, runner, report: CompileReport, example_inputs: tuple[torch.Tensor, ...], target: str):
        super().__init__()
        self.graph_module = gm
        self.report = report
        self.target = target
        self._runner = runner
        self._example_inputs = example_inputs

    def forward(self, *inputs):
        return self._runner(*inputs)

    def export_onnx(self, path: str | os.PathLike, *, dynamic_batch: bool = False, external_data: bool | None = None):
        """Export the rewritten graph to ONNX (checked, parity-tested, written atomically).

        The result - path, opset and onnxruntime parity - is also recorded in ``report.export``.
        """
        from runtime.onnx import export_onnx

        canonical = self.report.canonical or {}
        if dynamic_batch and canonical.get("batch_folded"):
            raise ExportError(f"dynamic_batch=True, but {canonical['batch_folded']} reads of the batch size were folded to the "
                              "traced batch (compile(..., dynamic_batch=False), or the model fails at another batch); "
                              "export with dynamic_batch=False")
        result = export_onnx(self.graph_module, self._example_inputs, path,
                             dynamic_batch=dynamic_batch, external_data=external_data)
        self.report.export = result.to_dict()
        return result


def run_eager(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """Run ``model`` in eval mode, naming the submodule that fails when the inputs do not fit."""
    stack: list[str] = []
    names = {m: name for name, m in model.named_modules()}

    def pre(m, _args):
        stack.append(names.get(m, "?"))

    def post(m, _args, _out):
        stack.pop()

    handles = [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*inputs)
    except Exception as e:  # noqa: BLE001
        failed = stack[-1] if stack else ""
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise InputError(
            f"example inputs of shape {shapes} do not fit the model: module '{failed or '<root>'}' "
            f"({type(model.get_submodule(failed)).__name__}) raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()


def with_budget(pipeline: PipelineSpec, budget: Budget) -> list:
    """``pipeline``'s passes with the ``budget`` pass inserted before the first ``fuse`` (it rewrites
    plain Conv2d / Linear modules), or appended."""
    if not isinstance(budget, Budget):
        raise BudgetError(f"budget must be a compiler.Budget, got {type(budget).__name__}")
    passes = load_pipeline(pipeline)
    if any(p.name == "budget" for p in passes):
        raise PipelineError("the pipeline already has a 'budget' pass; pass budget= or the pass, not both")
    at = next((i for i, p in enumerate(passes) if p.name == "fuse"), len(passes))
    return passes[:at] + [build_pass({"name": "budget", "budget": budget}, where="compile(budget=...)")] + passes[at:]


def _with(planner, **attrs):
    """A copy of the budget pass ``planner`` with ``attrs`` set (``recover(gm, step)`` after each plan
    step, the ``calibration`` data): the caller's pass object is not left holding this call's data."""
    out = copy.copy(planner)
    for k, v in attrs.items():
        setattr(out, k, v)
    return out


def _with_budget_pass(pipeline: PipelineSpec, what: str, leave: str) -> list:
    """``pipeline``'s passes, which must hold a budget pass for ``what`` (a FineTuneError otherwise)."""
    passes = load_pipeline(pipeline)
    if not any(p.name == "budget" for p in passes):
        raise FineTuneError(f"{what}: give budget= or a pipeline with a 'budget' pass, or leave {leave}")
    return passes


def compile(
    model: nn.Module,
    example_inputs,
    *,
    pipeline: PipelineSpec = "default",
    target: str = "torch",
    leaf_modules: Iterable[LeafSpec] = (),
    verify: bool = True,
    dump_dir: str | Path | None = None,
    finetune: FineTune | None = None,
    train_data: Iterable | None = None,
    val_data: Iterable | None = None,
    budget: Budget | None = None,
    dynamic_batch: bool = True,
) -> CompiledModel:
    """Compile ``model`` for inference on ``target``.

    Parameters
    ----------
    model : nn.Module
        Left untouched; the compiler works on a copy in eval mode.
    example_inputs : Tensor or tuple of Tensors
        Used to trace, propagate shapes and verify every pass against eager PyTorch.
    pipeline : "default", a TOML file path, or a list of passes / pass names / ``{"name": ..}`` tables
    target : "torch" (eager run of the rewritten graph), "onnx" (exported and run in onnxruntime) or
        "opencl" (our kernels on an OpenCL device; ``FXCOMPRESS_OPENCL_DEVICE`` picks it)
    leaf_modules : module types or dotted paths to keep whole instead of tracing through
    dynamic_batch : keep reads of the batch size symbolic so the result runs (and exports) at any
        batch; False folds them to the example's batch too (``compiler.canonical``)
    verify : compare with eager after every pass (``VerificationError`` past a pass's tolerance)
    dump_dir : write the graph after each pass here
    finetune : FineTune, optional
        After the passes, fine-tune the rewritten graph on ``train_data`` by distillation with
        ``model`` as the teacher (``compiler.finetune``), before the backend step; the per-epoch
        history goes to ``report.finetune``. ``train_data`` / ``val_data`` are DataLoaders or lists
        of ``(inputs, labels)`` batches; ``val_data`` drives early stopping and the best-epoch restore.
        With ``between_steps=N`` and a budget plan, also N epochs after each step of the plan (its
        pruning, each factorization; ``report.finetune["between_steps"]``), before the final epochs.
        With ``stages=(s1, s2, ...)`` and a budget, the budget is reached progressively: planned and
        applied at each fraction of the way (log scale), each stage followed by ``stage_epochs``
        epochs (``report.finetune["stages"]``, and with ``val_data`` the accuracy after each stage
        before and after its recovery in ``report.accuracy["stages"]``), then the final epochs.
    budget : Budget, optional
        Adds the ``budget`` pass before ``fuse`` (or last): per layer, keep, factorize (method and
        rank) or prune (ratio), chosen by the cost model of the OpenCL device (its calibration profile
        when there is one) to meet the budget with the least output error, the plan then timed on the
        device. The plan is in the report (``budget`` row details, with predicted and measured
        latency) and ``BudgetError`` names the closest achievable when no choice meets it.
        ``examples/budget_resnet.py`` shows it end to end.

    Returns
    -------
    CompiledModel
    """
    from runtime import device_runner, get_backend  # the facade wires the layers; core modules never import runtime

    check_module(model)
    inputs = as_input_tuple(example_inputs)
    if finetune is not None and not isinstance(finetune, FineTune):
        raise FineTuneError(f"finetune must be a compiler.FineTune, got {type(finetune).__name__}")
    if finetune is None and budget is None and (train_data is not None or val_data is not None):
        raise FineTuneError("train_data and val_data are for fine-tuning and budget plans: pass finetune=FineTune(...) "
                            "or budget=Budget(...) as well")
    if finetune is not None and train_data is None:
        raise FineTuneError("finetune=FineTune(...) needs train_data= (a DataLoader or a list of (inputs, labels) batches)")
    backend = get_backend(target)  # fail fast on a bad target name
    reference = run_eager(model, inputs)
    t0 = time.perf_counter()
    gm = trace(model, inputs, leaf_modules=leaf_modules, dynamic_batch=dynamic_batch)
    trace_seconds = time.perf_counter() - t0
    if budget is not None:
        pipeline = with_budget(pipeline, budget)
    if train_data is not None:  # a budget plan scores its candidates on the user's data
        pipeline = load_pipeline(pipeline)
        if any(p.name == "budget" for p in pipeline):
            cal = Calibration.from_batches(model, train_data, where="train_data")
            probing = replace(finetune or FineTune(), epochs=1, batches=(finetune or FineTune()).probe_batches,
                              progress=False, stages=(), between_steps=0)

            def probe(g) -> None:  # a short distillation fine-tune of a candidate plan (no validation)
                run_finetune(g, model, train_data, None, config=probing)

            extra = {"probe": probe, "probes": probing.probes} if probing.probes else {}
            pipeline = [_with(p, calibration=cal, **(extra if p.probe is None else {}))
                        if p.name == "budget" and p.calibration is None else p for p in pipeline]
    between: list[dict] = []
    if finetune is not None and finetune.between_steps:
        pipeline = _with_budget_pass(pipeline, "FineTune.between_steps fine-tunes between the steps of a budget plan",
                                     "between_steps at 0")
        step_config = replace(finetune, epochs=finetune.between_steps)

        def recover(g, step: str) -> None:
            between.append({"after": step, **run_finetune(g, model, train_data, val_data, config=step_config).to_dict()})

        # copies: the caller's pass objects are not left holding this call's model and data
        pipeline = [_with(p, recover=recover) if p.name == "budget" else p for p in pipeline]
    held_out = Calibration.from_batches(model, val_data, images=10**9, where="val_data") if val_data is not None else None
    stages: list[dict] = []
    if finetune is not None and finetune.stages:
        pipeline = _with_budget_pass(pipeline, "FineTune.stages reaches a budget in stages", "stages empty")
        if any(p.stages for p in pipeline if p.name == "budget"):
            raise FineTuneError("the pipeline's budget pass has stages of its own; give them there or in FineTune.stages, "
                                "not both")
        stage_config = replace(finetune, epochs=finetune.stage_epochs)

        def recover_stage(g, stage: str) -> None:
            row = {"after": stage, **({"compressed": held_out.metrics(g)} if held_out is not None else {})}
            row["finetune"] = run_finetune(g, model, train_data, val_data, config=stage_config).to_dict()
            if held_out is not None:
                row["recovered"] = held_out.metrics(g)
            stages.append(row)

        pipeline = [_with(p, stages=finetune.stages, recover_stage=recover_stage) if p.name == "budget" else p
                    for p in pipeline]
    gm, report = PassManager(pipeline, verify=verify, dump_dir=dump_dir, device=device_runner).run(gm, inputs, reference=reference)
    report.rows[0].seconds = trace_seconds
    report.model = type(model).__name__
    report.target = target
    if held_out is not None:
        report.accuracy = {"images": held_out.images, "original": held_out.metrics(model), "compressed": held_out.metrics(gm)}
        if stages:
            report.accuracy["stages"] = [{k: v for k, v in st.items() if k != "finetune"} for st in stages]
    if finetune is not None:
        report.finetune = run_finetune(gm, model, train_data, val_data, config=finetune).to_dict()
        if between:
            report.finetune["between_steps"] = between
        if stages:
            report.finetune["stages"] = [{"after": st["after"], **st["finetune"]} for st in stages]
        if held_out is not None:
            report.accuracy["recovered"] = held_out.metrics(gm)
    runner = backend.prepare(gm, inputs, report)
    return CompiledModel(gm, runner, report, inputs, target)
