"""Accuracy recovery: knowledge-distillation fine-tuning of a compressed model against the original.

    from compiler.finetune import FineTune, finetune
    result = finetune(compressed_gm, original_model, train_loader, val_loader, config=FineTune(epochs=3))

``config.py`` holds the request and the result, ``losses.py`` the objective (Hinton et al. 2015),
``loop.py`` the training loop, ``distributed.py`` the data-parallel path under ``torchrun``.
"""
from .config import OPTIMIZERS, EpochStats, FineTune, FineTuneResult
from .loop import finetune
from .losses import distillation_loss

__all__ = ["FineTune", "FineTuneResult", "EpochStats", "finetune", "distillation_loss", "OPTIMIZERS"]
