"""The distillation objective: soft targets (Hinton et al. 2015), labels, and matched features.

With student logits ``s``, teacher logits ``t``, temperature ``T`` and labels ``y``::

    L_kd   = T^2 * KL(p_t || p_s),   p_t = softmax(t / T),  p_s = softmax(s / T)   (mean over the batch)
    L      = alpha * L_kd + (1 - alpha) * CE(s, y) + w_f * mean_k MSE(f_s^k, f_t^k)

``F.kl_div(log p_s, p_t, reduction="batchmean")`` is exactly ``KL(p_t || p_s)`` per sample.

References
----------
Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", 2015.
Romero et al., "FitNets: hints for thin deep nets", 2015.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FineTuneError, choices
from .config import FeatureSpec

Inputs = tuple[torch.Tensor, ...]


def split_batch(batch, where: str) -> tuple[Inputs, torch.Tensor | None]:
    """A batch is a Tensor, ``(inputs,)`` or ``(inputs, labels)``; ``inputs`` a Tensor or a tuple of them."""
    if isinstance(batch, torch.Tensor):
        return (batch,), None
    if isinstance(batch, (tuple, list)) and 1 <= len(batch) <= 2:
        x = batch[0]
        inputs = (x,) if isinstance(x, torch.Tensor) else tuple(x) if isinstance(x, (tuple, list)) else None
        labels = batch[1] if len(batch) == 2 else None
        if inputs and all(isinstance(t, torch.Tensor) for t in inputs) and (labels is None or isinstance(labels, torch.Tensor)):
            return inputs, labels
    raise FineTuneError(f"{where}: a batch must be a Tensor, (inputs,) or (inputs, labels) with tensors, got "
                        f"{_describe(batch)}")


def logits_of(out, who: str) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        what = f"a {out.dim()}-D Tensor" if isinstance(out, torch.Tensor) else type(out).__name__
        raise FineTuneError(f"the {who} must return logits of shape (batch, classes) to be distilled, got {what}")
    return out


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(student, labels)``, averaged over the batch.

    References
    ----------
    Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", 2015.
    """
    t = temperature
    loss = student.new_zeros(())
    if alpha > 0:
        kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                      reduction="batchmean", log_target=True)
        loss = loss + alpha * t * t * kl
    if alpha < 1:
        if labels is None:
            raise FineTuneError(f"alpha={alpha} < 1 asks for cross-entropy on labels, but the batches carry none: "
                                "give (inputs, labels) batches, or alpha=1.0 to learn from the teacher alone")
        loss = loss + (1 - alpha) * F.cross_entropy(student, labels)
    return loss


def correct(logits: torch.Tensor, target: torch.Tensor) -> int:
    """Top-1 hits against labels (int) or against another model's logits (float)."""
    ref = target.argmax(1) if target.is_floating_point() else target
    return int((logits.argmax(1) == ref).sum())


class FeatureTaps:
    """Forward hooks that capture the outputs of matched layers of the student and the teacher.

    Use as a context manager; the hooks are removed on exit. ``loss()`` is the mean MSE over the
    pairs of the last forward of both models.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, features: Sequence[FeatureSpec]):
        self.pairs = [(f, f) if isinstance(f, str) else f for f in features]
        s_paths = dict(student.named_modules())
        t_paths = dict(teacher.named_modules())
        for s, t in self.pairs:
            for path, paths, who in ((s, s_paths, "student"), (t, t_paths, "teacher")):
                if path not in paths:
                    raise FineTuneError(f"feature layer '{path}' is not a module of the {who}; valid choices are "
                                        f"{_few(n for n in paths if n)}")
        self.student_out: dict[str, torch.Tensor] = {}
        self.teacher_out: dict[str, torch.Tensor] = {}
        self._s_paths, self._t_paths = s_paths, t_paths
        self._handles: list = []

    def __enter__(self) -> FeatureTaps:
        for s, t in self.pairs:
            self._handles.append(self._s_paths[s].register_forward_hook(_keep(self.student_out, s)))
            self._handles.append(self._t_paths[t].register_forward_hook(_keep(self.teacher_out, t)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def loss(self) -> torch.Tensor | None:
        if not self.pairs:
            return None
        terms = []
        for s, t in self.pairs:
            for path, out, who in ((s, self.student_out, "student"), (t, self.teacher_out, "teacher")):
                if path not in out:
                    raise FineTuneError(f"feature layer '{path}' of the {who} did not run in its forward (in a traced "
                                        "GraphModule only leaf modules are called): pick a leaf module path")
            fs, ft = self.student_out[s], self.teacher_out[t]
            if fs.shape != ft.shape:
                raise FineTuneError(f"feature shapes differ: student '{s}' {tuple(fs.shape)}, teacher '{t}' "
                                    f"{tuple(ft.shape)}; pick layers whose output compression left unchanged")
            terms.append(F.mse_loss(fs, ft.detach()))
        self.student_out.clear()
        self.teacher_out.clear()
        return torch.stack(terms).mean()


def _keep(store: dict[str, torch.Tensor], path: str):
    def hook(_m, _args, out):
        if not isinstance(out, torch.Tensor):
            raise FineTuneError(f"feature layer '{path}' returns {type(out).__name__}, not a Tensor")
        store[path] = out
    return hook


def _few(names, limit: int = 12) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return choices(names[:limit]) + more


def _describe(x) -> str:
    if isinstance(x, (tuple, list)):
        return f"{type(x).__name__} of [{', '.join(type(v).__name__ for v in x)}]"
    return type(x).__name__
