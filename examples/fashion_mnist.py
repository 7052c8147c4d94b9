"""Reference models for Fashion-MNIST (1x28x28, 10 classes), and plain training and evaluation.

    from fashion_mnist import small_cnn, resnet, vgg5, train, evaluate   # with examples/ on sys.path

``small_cnn()``: three conv-BN-ReLU blocks and a linear head, about 62k parameters; about 91.6% test
accuracy after 3 epochs of AdamW. ``resnet(depth)``: He et al.'s CIFAR ResNet (6n+2 layers, widths
16/32/64, identity shortcuts with 1x1 projections where the shape changes); ``depth=8`` or ``20``,
``width=32`` doubles every stage.
The factories return untrained models; ``examples/finetune_fashion_mnist.py`` trains and compresses one.

References
----------
Xiao, Rasul & Vollgraf, "Fashion-MNIST", 2017. He et al., "Deep residual learning for image recognition", 2016.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def small_cnn(num_classes: int = 10) -> nn.Sequential:
    """28x28 -> 32@14x14 -> 64@7x7 -> 64@3x3 -> linear; about 62k parameters.

    Wide enough to lose 4x of its parameters to compression and win most of the accuracy back in 3
    epochs of distillation; the 36k-parameter 32/44/48 version it replaces lost 1.4 points at 3.5x.
    """
    return nn.Sequential(
        *_conv_bn_relu(1, 32), nn.MaxPool2d(2),
        *_conv_bn_relu(32, 64), nn.MaxPool2d(2),
        *_conv_bn_relu(64, 64), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 3 * 3, num_classes),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet for 1-channel 28x28 inputs: 3 stages of n blocks, widths w, 2w, 4w (w = 16)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        blocks, cin = [], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def resnet(depth: int = 20, num_classes: int = 10, width: int = 16) -> ResNet:
    """ResNet-8 (78k parameters) or ResNet-20 (272k); ``width=32``: ResNet-8 with widths 32/64/128
    (nine convs, 310k parameters), the compass benchmark's reference."""
    return ResNet(depth, num_classes, width=width)


def vgg5(num_classes: int = 10) -> nn.Sequential:
    """Five 3x3 conv+BN+ReLU (32, 32, 64, 64, 128), max-pools after the 2nd and 4th, global average
    pool, Linear 128-128-10; 157k parameters. The fine-tune defaults were measured on it
    (``benchmarks/finetune_defaults.py``), with ``small_cnn``."""
    return nn.Sequential(*_conv_bn_relu(1, 32), *_conv_bn_relu(32, 32), nn.MaxPool2d(2),
                         *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), nn.MaxPool2d(2),
                         *_conv_bn_relu(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))


def dsnet(num_classes: int = 10) -> nn.Sequential:
    """A MobileNet-style net: a 3x3 conv+BN+ReLU stem (32), three depthwise-separable blocks (3x3
    depthwise + 1x1 pointwise, each with BN+ReLU; 32->64, 64->128, 128->256) with max-pools after the
    first two, global average pool, Linear 256-10; 49k parameters. Held out: no default of the
    compiler, the planner or the fine-tune was set on it."""
    def ds(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*_conv_bn_relu(1, 32), *ds(32, 64), nn.MaxPool2d(2), *ds(64, 128), nn.MaxPool2d(2),
                         *ds(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, num_classes))


def trained(name: str, model: nn.Module, dataset, *, epochs: int, cache: Path, recipe: str = "") -> dict:
    """Train ``model`` in place on ``dataset`` (its own seeded shuffle, batch 128, ``train``), or load
    the weights an identical recipe left in ``cache`` (written atomically, read with weights_only).
    Returns ``{"cache": path, "train_s": seconds or None when loaded}``."""
    from compiler.fileio import atomic_dir

    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    key = f"{name}|{shapes}|epochs={epochs}|{recipe}"
    path = Path(cache) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    info = {"cache": str(path), "train_s": None}
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        t0 = time.perf_counter()
        data = DataLoader(dataset, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0))
        train(model, data, epochs=epochs, progress=False)  # its own shuffle: the same weights whatever ran before
        info["train_s"] = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_dir(path) as tmp:
            torch.save(model.state_dict(), tmp / path.name)
            os.replace(tmp / path.name, path)
    model.eval()
    return info


def train(model: nn.Module, loader: DataLoader, *, epochs: int = 3, lr: float = 3e-3, progress: bool = True) -> nn.Module:
    """AdamW with a one-cycle schedule and cross-entropy; trains ``model`` in place."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    model.train()
    with tqdm(total=epochs * len(loader), desc="train", disable=not progress) as bar:
        for _ in range(epochs):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy) over ``loader``; eval mode."""
    was = getattr(model, "training", False)
    model.eval()
    loss = hits = seen = 0.0
    for x, y in loader:
        out = model(x)
        loss += F.cross_entropy(out, y, reduction="sum").item()
        hits += (out.argmax(1) == y).sum().item()
        seen += len(y)
    model.train(was)
    return loss / seen, hits / seen


REFERENCES = {"small_cnn": small_cnn, "vgg5": vgg5, "dsnet": dsnet, "resnet8": lambda: resnet(8), "resnet8w": lambda: resnet(8, width=32)}


def reference(name: str, dataset, *, cache: Path, epochs: int = 3) -> nn.Module:
    """``REFERENCES[name]`` seeded, trained on ``dataset`` (or loaded from ``cache``), in eval mode."""
    if name not in REFERENCES:
        raise ValueError(f"unknown reference model '{name}'; valid choices: {sorted(REFERENCES)}")
    torch.manual_seed(0)
    model = REFERENCES[name]()
    trained(name, model, dataset, epochs=epochs, cache=cache)
    return model


def reference_names(text: str, known=REFERENCES) -> list[str]:
    """``"a,b"`` as a list of reference model names, for a ``--models`` argument (argparse ``type=``)."""
    import argparse

    names = text.split(",")
    if bad := [n for n in names if n not in known]:
        raise argparse.ArgumentTypeError(f"unknown models {bad}; valid choices: {sorted(known)}")
    return names
