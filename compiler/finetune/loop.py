"""``finetune``: recover a compressed model's accuracy by distilling the original model into it.

One run: seed, then for each epoch train on every batch (teacher in eval mode, no gradients;
student in train mode), step a cosine learning-rate schedule per batch, and evaluate on the
validation loader. The best validation loss keeps an in-memory copy of the student's
``state_dict``, the starting weights included (epoch 0: a CP-factorized CNN at 91.09% fell to 81.48%
after three epochs, and the starting weights must win then); ``patience`` epochs without
improvement stop the run; the best copy is loaded back.
Under ``torchrun`` the same loop runs data-parallel (``distributed.py``).

References
----------
Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", 2015.
Loshchilov & Hutter, "SGDR: stochastic gradient descent with warm restarts", 2017.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..errors import FineTuneError
from .config import EpochStats, FineTune, FineTuneResult
from .distributed import DistContext, all_sum, epoch_loader, setup_distributed, shard, teardown_distributed
from .losses import FeatureTaps, correct, distillation_loss, logits_of, split_batch
from .renorm import renormalized

log = logging.getLogger(__name__)
RENORM_BATCHES = 8  # training batches whose conv outputs start the put-back BatchNorms (FineTune.renormalize)


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None = None,
    *,
    config: FineTune = FineTune(),
) -> FineTuneResult:
    """Fine-tune ``student`` in place by knowledge distillation from ``teacher``.

    Parameters
    ----------
    student : nn.Module
        The compressed model (an ``fx.GraphModule`` from ``compiler.compile`` or a pass manager).
        Trained in place; it ends with the best epoch's weights and its original train/eval mode.
    teacher : nn.Module
        The original model; run in eval mode without gradients, never modified.
    train_loader, val_loader : sized, re-iterable collections of batches
        A ``DataLoader`` or a list. A batch is a Tensor, ``(inputs,)`` or ``(inputs, labels)``.
        A ``DataLoader``'s ``batch_size`` is the global batch when distributed.
    config : FineTune
        The objective (``temperature``, ``alpha``, ``features``) and the schedule.

    Returns
    -------
    FineTuneResult
        Per-epoch train loss/accuracy and validation loss/accuracy, the best epoch, early stop.

    Raises
    ------
    FineTuneError
        Bad arguments, label-less batches with ``alpha < 1``, outputs that are not logits, feature
        layers that are missing or differ in shape.

    References
    ----------
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", 2015.
    """
    if not isinstance(config, FineTune):
        raise FineTuneError(f"config must be a FineTune, got {type(config).__name__}")
    for name, m in (("student", student), ("teacher", teacher)):
        if not isinstance(m, nn.Module):
            raise FineTuneError(f"the {name} must be an nn.Module, got {type(m).__name__}")
    _check_sized(train_loader, "train_loader")
    if val_loader is not None:
        _check_sized(val_loader, "val_loader")
    if not any(p.requires_grad for p in student.parameters()):
        raise FineTuneError("the student has no parameters that require gradients: nothing to fine-tune")
    taps = FeatureTaps(student, teacher, config.features)  # validates the layer paths before any work

    ctx = setup_distributed()
    was_training = student.training, teacher.training
    try:
        # the caller's RNG state is left alone; gradients are on even when called under no_grad (a pass)
        with torch.random.fork_rng(devices=[]), _deterministic(), torch.enable_grad():
            torch.manual_seed(config.seed)
            if not config.renormalize:
                return _run(student, teacher, train_loader, val_loader, config, taps, ctx)
            # drawn only when there are convs to renormalize
            calibration = (split_batch(b, "train_loader")[0] for b in itertools.islice(train_loader, RENORM_BATCHES))
            with renormalized(student, calibration) as wrapped:
                result = _run(student, teacher, train_loader, val_loader, config, taps, ctx)
            return dataclasses.replace(result, renormalized=wrapped)
    finally:
        student.train(was_training[0])
        teacher.train(was_training[1])
        teardown_distributed(ctx)


def _run(student: nn.Module, teacher: nn.Module, train_loader: Iterable, val_loader: Iterable | None,
         config: FineTune, taps: FeatureTaps, ctx: DistContext) -> FineTuneResult:
    loader, set_epoch = epoch_loader(train_loader, ctx, config.seed)
    model = DistributedDataParallel(student) if ctx.world > 1 else student
    params = [p for p in student.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    per_epoch = len(loader) if config.batches is None else min(config.batches, len(loader))
    steps = config.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps, config.warmup))
    teacher.eval()

    history: list[EpochStats] = []
    best_loss, best_epoch, best_state, stale, stopped = math.inf, 0, None, 0, False
    start_loss = start_acc = None
    if val_loader is not None:  # the starting weights are a candidate too: fine-tuning must not make them worse
        start_loss, start_acc = _evaluate(student, teacher, val_loader, taps, config, ctx)
        best_loss, best_state = start_loss, _snapshot(student)
    shown: dict[str, str] = {}  # the last validation figures, kept on the bar while the next epoch trains
    bar = tqdm(total=steps, desc="fine-tune", unit="batch", disable=not config.progress or ctx.rank != 0)
    with taps, bar:
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            set_epoch(epoch)
            model.train()
            loss_sum = hits = seen = 0.0
            for batch in itertools.islice(loader, per_epoch):
                inputs, labels = split_batch(batch, "train_loader")
                with torch.no_grad():
                    t_logits = logits_of(teacher(*inputs), "teacher")
                s_logits = logits_of(model(*inputs), "student")
                loss = _objective(s_logits, t_logits, labels, taps, config)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                schedule.step()
                n = s_logits.shape[0]
                loss_sum += loss.item() * n
                hits += correct(s_logits, labels if labels is not None else t_logits)
                seen += n
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.4f}", acc=f"{hits / seen:.3f}", **shown, refresh=False)
            loss_sum, hits, seen = all_sum([loss_sum, hits, seen], ctx)
            val_loss, val_acc = (None, None) if val_loader is None else _evaluate(student, teacher, val_loader, taps, config, ctx)
            stats = EpochStats(epoch=epoch, train_loss=loss_sum / seen, train_acc=hits / seen, val_loss=val_loss,
                               val_acc=val_acc, lr=opt.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
            history.append(stats)
            log.info("fine-tune epoch %d/%d: train loss %.4f acc %.4f, val loss %s acc %s", epoch, config.epochs,
                     stats.train_loss, stats.train_acc, _fmt(val_loss), _fmt(val_acc))
            if val_loss is None:
                best_epoch = epoch
            elif val_loss < best_loss:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = _snapshot(student)
            else:
                stale += 1
                if stale >= config.patience:
                    stopped = epoch < config.epochs
                    break
            if val_loss is not None:
                shown = {"val_loss": f"{val_loss:.4f}", "val_acc": f"{val_acc:.3f}"}
    if best_state is not None:
        student.load_state_dict(best_state)
    opt.zero_grad(set_to_none=True)  # free the gradients; the student is handed back for inference
    return FineTuneResult(history=tuple(history) if ctx.rank == 0 else (), best_epoch=best_epoch,
                          stopped_early=stopped, world_size=ctx.world, rank=ctx.rank,
                          start_val_loss=start_loss, start_val_acc=start_acc)


def lr_lambda(steps: int, warmup: float):
    """The learning-rate factor at each batch: linear warm-up over the first ``warmup`` fraction of
    the ``steps``, then cosine from 1 to 0 (``CosineAnnealingLR`` with ``eta_min=0`` over the rest)."""
    w = int(round(warmup * steps))

    def factor(step: int) -> float:
        if step < w:
            return (step + 1) / w
        return 0.5 * (1 + math.cos(math.pi * min(step - w, steps - w) / max(steps - w, 1)))
    return factor


def _snapshot(student: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the student's weights, for the best-epoch restore."""
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


def _objective(s_logits: torch.Tensor, t_logits: torch.Tensor, labels: torch.Tensor | None,
               taps: FeatureTaps, config: FineTune) -> torch.Tensor:
    loss = distillation_loss(s_logits, t_logits, labels, temperature=config.temperature, alpha=config.alpha)
    feat = taps.loss()
    return loss if feat is None else loss + config.feature_weight * feat


@torch.no_grad()
def _evaluate(student: nn.Module, teacher: nn.Module, val_loader: Iterable, taps: FeatureTaps,
              config: FineTune, ctx: DistContext) -> tuple[float, float]:
    """Validation loss (the training objective) and accuracy; distributed runs split the batches."""
    student.eval()
    loss_sum = hits = seen = 0.0
    for batch in shard(val_loader, ctx):
        inputs, labels = split_batch(batch, "val_loader")
        t_logits = logits_of(teacher(*inputs), "teacher")
        s_logits = logits_of(student(*inputs), "student")
        n = s_logits.shape[0]
        loss_sum += _objective(s_logits, t_logits, labels, taps, config).item() * n
        hits += correct(s_logits, labels if labels is not None else t_logits)
        seen += n
    loss_sum, hits, seen = all_sum([loss_sum, hits, seen], ctx)
    return loss_sum / seen, hits / seen


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels where torch has them (a warning, not an error, where it has none)."""
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _check_sized(loader, name: str) -> None:
    try:
        n = len(loader)
    except TypeError:
        raise FineTuneError(f"{name} must be a sized, re-iterable collection of batches (a DataLoader or a list), "
                            f"got {type(loader).__name__}") from None
    if n == 0:
        raise FineTuneError(f"{name} has no batches")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
