"""Distillation fine-tuning (compiler/finetune/), the Fashion-MNIST loader (compiler/data.py), their
wiring into compile() and the CLI. Small data throughout: the whole file runs in well under a minute."""
import gzip
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compiler
from compiler.cli import main
from compiler.data import FASHION_MNIST_DIR, fashion_mnist, read_idx
from compiler.errors import CompilerError, DatasetError, FineTuneError
from compiler.finetune import FineTune, distillation_loss, finetune

HAVE_FMNIST = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="apt-get install -y dataset-fashion-mnist")
QUIET = dict(progress=False)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; these models are tiny
    yield
    torch.set_num_threads(n)


def cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(32 * 3 * 3, 10))


@torch.no_grad()
def loss_acc(model, data: TensorDataset) -> tuple[float, float]:
    model.eval()
    x, y = data.tensors
    out = model(x)
    return F.cross_entropy(out, y).item(), (out.argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def fmnist():
    """A small CNN trained on 1,024 Fashion-MNIST images; 512 more for validation, 1,000 test images."""
    torch.manual_seed(0)
    x, y = fashion_mnist("train", limit=1536).tensors
    train, val = TensorDataset(x[:1024], y[:1024]), TensorDataset(x[1024:], y[1024:])
    test = fashion_mnist("test", limit=1000)
    model = cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = DataLoader(train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
    model.eval()
    assert loss_acc(model, test)[1] > 0.7  # a teacher worth distilling
    return model, train, val, test


PRUNE = ["cleanup", "fold_bn", {"name": "prune_channels", "ratio": 0.5}]


@needs_fmnist
def test_compile_with_finetune_recovers_a_pruned_cnn(fmnist):
    model, train, val, test = fmnist
    x = test.tensors[0][:1]
    loaders = dict(train_data=DataLoader(train, batch_size=64, shuffle=True), val_data=DataLoader(val, batch_size=256))
    plain = compiler.compile(model, x, pipeline=PRUNE)
    tuned = compiler.compile(model, x, pipeline=PRUNE, finetune=FineTune(epochs=2, lr=3e-3, **QUIET), **loaders)
    assert plain.report.finetune is None
    before, after, teacher = loss_acc(plain, test), loss_acc(tuned, test), loss_acc(model, test)
    assert after[0] < 0.8 * before[0] and after[1] > before[1] + 0.05, (before, after, teacher)
    assert sum(p.numel() for p in tuned.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    hist = tuned.report.finetune["history"]
    assert [h["epoch"] for h in hist] == [1, 2] and tuned.report.finetune["best_epoch"] in (1, 2)
    assert all(h["val_loss"] is not None and 0 <= h["val_acc"] <= 1 for h in hist)
    assert hist[-1]["lr"] < 1e-8  # the cosine schedule ends at zero
    json.loads(tuned.report.to_json())  # the history is serialisable
    assert not tuned.graph_module.training and not model.training  # modes restored


@needs_fmnist
def test_finetune_as_the_iterative_pruning_callback(fmnist):
    from passes.pruning.plan import apply_plan, pruning_plan
    from passes.pruning.schedule import prune_iteratively

    model, train, val, test = fmnist
    x = test.tensors[0][:1]
    batches = list(DataLoader(train, batch_size=64))
    results = []
    cfg = FineTune(epochs=1, lr=3e-3, alpha=1.0, **QUIET)
    gm = prune_iteratively(model, x, ratio=0.5, steps=2,
                           callback=lambda g, step: results.append(finetune(g, model, batches, config=cfg)))
    assert len(results) == 2 and all(r.history[0].train_loss > 0 for r in results)
    one_shot = prune_iteratively(model, x, ratio=0.5, steps=2)
    assert loss_acc(gm, test)[0] < 0.8 * loss_acc(one_shot, test)[0]
    rebuilt = apply_plan(model, x, pruning_plan(gm))  # the composed plan plus the fine-tuned weights rebuild it
    rebuilt.load_state_dict(gm.state_dict())
    assert torch.equal(rebuilt.eval()(test.tensors[0][:8]), gm(test.tensors[0][:8]))


def mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, 8), nn.ReLU(), nn.Linear(8, 4))


def synthetic(n: int = 256, seed: int = 0) -> tuple[nn.Module, TensorDataset]:
    """A random teacher and inputs it labels; the student is a narrower MLP traced to a GraphModule."""
    torch.manual_seed(seed)
    teacher = mlp(32)
    x = torch.randn(n, 16)
    with torch.no_grad():
        teacher[-1].weight.mul_(20)  # logits of a confident classifier
        teacher[-1].bias.sub_(teacher(x).mean(0))  # and every class about equally often
        y = teacher(x).argmax(1)
    return teacher.eval(), TensorDataset(x, y)


def student(seed: int = 1) -> torch.fx.GraphModule:
    torch.manual_seed(seed)
    return compiler.trace(mlp(12), torch.randn(1, 16))


def test_same_seed_same_weights_other_seed_other_weights():
    teacher, data = synthetic()
    # a user generator that the first run would advance: the loader is rebuilt around a seeded sampler
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(5))
    runs = []
    for seed in (0, 0, 1):
        s = student()
        r = finetune(s, teacher, loader, list(DataLoader(data, batch_size=64)), config=FineTune(epochs=2, seed=seed, **QUIET))
        runs.append((s.state_dict(), r))
    (a, ra), (b, rb), (c, _) = runs
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [replace(h, seconds=0) for h in ra.history] == [replace(h, seconds=0) for h in rb.history]
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert ra.history[1].train_loss < ra.history[0].train_loss


def test_warmup_then_cosine_and_a_batch_cap_per_epoch():
    from compiler.finetune.loop import lr_lambda

    f = lr_lambda(10, 0.2)
    assert [f(0), f(1), f(2)] == [0.5, 1.0, 1.0] and f(9) < 0.1 and f(5) == pytest.approx(0.5 * (1 + np.cos(np.pi * 3 / 8)))
    g = lr_lambda(8, 0.0)  # no warm-up: CosineAnnealingLR's factors
    assert [g(t) for t in range(8)] == pytest.approx([0.5 * (1 + np.cos(np.pi * t / 8)) for t in range(8)])
    teacher, data = synthetic(256)

    class Counted(list):
        drawn = 0

        def __iter__(self):
            for b in super().__iter__():
                Counted.drawn += 1
                yield b

    loader = Counted(DataLoader(data, batch_size=32))
    s = student()
    r = finetune(s, teacher, loader, config=FineTune(epochs=2, batches=3, warmup=0.5, lr=1e-2, **QUIET))
    lrs = [h.lr for h in r.history]
    assert Counted.drawn == 2 * 3  # 3 of the 8 batches per epoch
    assert lrs == pytest.approx([1e-2, 0.0], abs=1e-9)  # 6 steps: 3 of warm-up up to 1e-2, then the cosine to 0


def test_early_stopping_restores_the_best_epoch():
    teacher, data = synthetic()
    x, y = data.tensors
    s = student()
    # validation labels disagree with the training labels: the better the student fits, the worse it validates
    val = [(x, (y + 1) % 4)]
    r = finetune(s, teacher, DataLoader(data, batch_size=32, shuffle=True), val,
                 config=FineTune(epochs=8, lr=1e-2, alpha=0.0, patience=2, **QUIET))
    losses = [r.start_val_loss] + [h.val_loss for h in r.history]  # epoch 0: the starting weights
    assert r.best_epoch == int(np.argmin(losses))
    assert r.stopped_early and len(losses) - 1 == r.best_epoch + 2 < 8
    with torch.no_grad():  # the best epoch's weights are back
        assert F.cross_entropy(s(x), (y + 1) % 4).item() == pytest.approx(min(losses), rel=1e-6)


def test_starting_weights_are_kept_when_fine_tuning_only_hurts():
    teacher, data = synthetic()
    x, y = data.tensors
    s = student()
    before = {k: v.clone() for k, v in s.state_dict().items()}
    # a learning rate that wrecks the weights: every epoch validates worse than the start
    r = finetune(s, teacher, DataLoader(data, batch_size=32, shuffle=True), [(x, y)],
                 config=FineTune(epochs=2, lr=50.0, optimizer="sgd", patience=5, **QUIET))
    assert all(h.val_loss > r.start_val_loss for h in r.history)
    assert r.best_epoch == 0
    assert all(torch.equal(before[k], v) for k, v in s.state_dict().items())


def test_feature_distillation_pulls_matched_layers_together():
    teacher, data = synthetic()
    x = data.tensors[0]
    batches = list(DataLoader(data, batch_size=32))

    def gap(weight: float) -> float:
        torch.manual_seed(3)
        s = compiler.trace(nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)),
                           torch.randn(1, 16))
        if weight:
            finetune(s, teacher, batches, config=FineTune(epochs=5, lr=1e-2, features=("3",), feature_weight=weight, **QUIET))
        with torch.no_grad():
            return F.mse_loss(_tap(s, "3", x), teacher[:4](x)).item()

    untuned, tuned = gap(0.0), gap(10.0)
    assert tuned < 0.5 * untuned
    with pytest.raises(FineTuneError, match=r"feature shapes differ: student '1' \(256, 12\), teacher '1' \(256, 32\)"):
        finetune(student(), teacher, [data.tensors], config=FineTune(features=("1",), **QUIET))


def _tap(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    out = {}
    h = model.get_submodule(path).register_forward_hook(lambda m, a, o: out.setdefault("y", o))
    model(x)
    h.remove()
    return out["y"]


DDP_WORKER = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from torch.utils.data import DataLoader
    import compiler
    from compiler.finetune import FineTune, finetune
    torch.set_num_threads(1)
    d = torch.load(sys.argv[1], weights_only=False)
    s = compiler.trace(nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)),
                       torch.randn(1, 16))
    s.load_state_dict(d["student"])
    r = finetune(s, d["teacher"], DataLoader(d["data"], batch_size=32, shuffle=True), DataLoader(d["data"], batch_size=64),
                 config=FineTune(epochs=2, progress=False))
    torch.save({"state": s.state_dict(), "result": r}, sys.argv[2] + f".{r.rank}")
    """
)


def test_two_gloo_processes_under_torchrun_match_one_process(tmp_path):
    teacher, data = synthetic()
    s = student()
    # a GraphModule from compiler.trace does not unpickle (its tracer takes arguments): ship the weights
    torch.save({"student": s.state_dict(), "teacher": teacher, "data": data}, tmp_path / "in.pt")
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "worker.py"), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"out.pt.{r}", weights_only=False) for r in (0, 1))
    one = finetune(s, teacher, DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=64),
                   config=FineTune(epochs=2, **QUIET))
    assert rank0["result"].world_size == 2 and rank1["result"].history == () and len(rank0["result"].history) == 2
    for k, w in s.state_dict().items():
        torch.testing.assert_close(rank0["state"][k], w, rtol=1e-5, atol=1e-6)
        assert torch.equal(rank0["state"][k], rank1["state"][k])  # DDP keeps the replicas identical
    for h2, h1 in zip(rank0["result"].history, one.history):
        assert h2.train_loss == pytest.approx(h1.train_loss, rel=1e-5)
        assert h2.val_loss == pytest.approx(h1.val_loss, rel=1e-5) and h2.val_acc == h1.val_acc


def test_teardown_frees_cyclic_wrappers_before_the_process_group_goes():
    """DDP wrappers sit in reference cycles: teardown collects them while the group still exists."""
    import gc
    import weakref

    from compiler.finetune.distributed import DistContext, teardown_distributed

    class Wrapper:
        pass

    gc.disable()
    try:
        w = Wrapper()
        w.me = w
        ref = weakref.ref(w)
        del w
        teardown_distributed(DistContext())  # one process: nothing to do
        assert ref() is not None
        teardown_distributed(DistContext(world=2, rank=0))
        assert ref() is None
    finally:
        gc.enable()


def test_distillation_loss_matches_hinton():
    s, t, y = torch.randn(5, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    T, a = 3.0, 0.7
    p_t, p_s = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    want = a * T * T * kl + (1 - a) * F.cross_entropy(s, y)
    assert distillation_loss(s, t, y, temperature=T, alpha=a).item() == pytest.approx(want.item(), rel=1e-5)
    assert distillation_loss(t, t, None, temperature=T, alpha=1.0).item() == pytest.approx(0.0, abs=1e-6)


def write_idx(path, array: np.ndarray, magic: bytes | None = None) -> None:
    head = magic if magic is not None else bytes([0, 0, 8, array.ndim])
    with gzip.open(path, "wb") as f:
        f.write(head + np.asarray(array.shape, dtype=">u4").tobytes() + array.astype(np.uint8).tobytes())


def test_idx_parser_on_files_written_here(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 10, 7)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz", limit=3), images[:3])
    x, y = fashion_mnist("test", root=tmp_path).tensors
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(labels))
    torch.testing.assert_close(x[2, 0] * 0.353 + 0.286, torch.from_numpy(images[2] / 255).float())
    write_idx(tmp_path / "bad.gz", labels, magic=b"\x00\x00\x0d\x01")  # float IDX, not ours
    with pytest.raises(DatasetError, match="not an unsigned-byte IDX file"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + np.uint32(9).byteswap().tobytes() + b"ab"))
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "short.gz")


@needs_fmnist
def test_real_fashion_mnist_files():
    x, y = fashion_mnist("test", limit=2000).tensors
    assert x.shape == (2000, 1, 28, 28) and abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1
    assert torch.bincount(y, minlength=10).min() > 150  # every class present


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p: fashion_mnist("train", root=p), DatasetError, "apt-get install -y dataset-fashion-mnist"),
        (lambda p: fashion_mnist("valid", root=p), DatasetError, "valid choices are ['test', 'train']"),
        (lambda p: FineTune(epochs=0), FineTuneError, "epochs must be an int >= 1, got 0"),
        (lambda p: FineTune(epochs=True), FineTuneError, "epochs must be an int >= 1"),
        (lambda p: FineTune(optimizer="adam"), FineTuneError, "unknown optimizer 'adam', valid choices are ['adamw', 'sgd']"),
        (lambda p: FineTune(alpha=1.5), FineTuneError, "alpha must be in [0, 1]"),
        (lambda p: FineTune(temperature=0), FineTuneError, "temperature must be a finite number > 0"),
        (lambda p: FineTune(features=["fc"]), FineTuneError, "features must be a tuple"),
        (lambda p: FineTune(warmup=1.0), FineTuneError, "warmup is a fraction of the batches in [0, 1)"),
        (lambda p: FineTune(batches=0), FineTuneError, "batches must be None or an int >= 1"),
        (lambda p: FineTune(stages=(0.5, 0.5)), FineTuneError, "stages must be a tuple of increasing fractions"),
        (lambda p: FineTune(probes=-1), FineTuneError, "probes must be an int >= 0"),
    ],
)
def test_typed_errors(tmp_path, call, error, message):
    with pytest.raises(error) as info:
        call(tmp_path)
    assert message in str(info.value) and isinstance(info.value, CompilerError)


def test_data_errors_in_finetune():
    teacher, data = synthetic(64)
    unlabelled = list(DataLoader(TensorDataset(data.tensors[0]), batch_size=32))
    with pytest.raises(FineTuneError, match=r"alpha=0.5 < 1 asks for cross-entropy on labels, but the batches carry none"):
        finetune(student(), teacher, unlabelled, config=FineTune(**QUIET))
    r = finetune(student(), teacher, unlabelled, config=FineTune(alpha=1.0, epochs=1, **QUIET))  # teacher-only is fine
    assert r.best_epoch == 1 and 0 <= r.history[0].train_acc <= 1
    with pytest.raises(FineTuneError, match=r"feature layer 'nope' is not a module of the student; valid choices are \['0', '1'"):
        finetune(student(), teacher, unlabelled, config=FineTune(features=("nope",), **QUIET))
    with pytest.raises(FineTuneError, match="sized, re-iterable"):
        finetune(student(), teacher, iter(unlabelled), config=FineTune(**QUIET))
    with pytest.raises(FineTuneError, match="has no batches"):
        finetune(student(), teacher, [], config=FineTune(**QUIET))
    with pytest.raises(FineTuneError, match="needs train_data="):
        compiler.compile(teacher, data.tensors[0][:1], finetune=FineTune())
    with pytest.raises(FineTuneError, match="pass finetune=FineTune"):
        compiler.compile(teacher, data.tensors[0][:1], train_data=unlabelled)


MODEL = textwrap.dedent(
    """
    from torch import nn

    def cnn():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                             nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
    """
)


@needs_fmnist
def test_cli_compile_with_finetune(tmp_path, capsys):
    (tmp_path / "m.py").write_text(MODEL)
    rep = tmp_path / "r.json"
    rc = main(["compile", f"{tmp_path / 'm.py'}:cnn", "--input-shape", "1,1,28,28", "--finetune-data", "fashion-mnist",
               "--epochs", "1", "--train-limit", "640", "--batch-size", "64", "--no-progress", "--report", str(rep)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "fine-tuning (distillation from the original model)" in out and "test accuracy: original" in out
    ft = json.loads(rep.read_text())["finetune"]
    assert len(ft["history"]) == 1 and ft["history"][0]["val_acc"] is not None
    rc = main(["compile", f"{tmp_path / 'm.py'}:cnn", "--input-shape", "1,1,28,28", "--epochs", "2"])
    assert rc == 1 and "--epochs only apply with --finetune-data" in capsys.readouterr().err
    rc = main(["compile", f"{tmp_path / 'm.py'}:cnn", "--input-shape", "1,1,28,28", "--finetune-data", "fashion-mnist",
               "--epochs", "0", "--train-limit", "64"])
    assert rc == 1 and "FineTuneError: FineTune epochs must be an int >= 1, got 0" in capsys.readouterr().err


def test_renormalized_puts_identity_batchnorms_in_and_folds_them_back():
    """renorm.py: inside the block every conv of a folded graph (FusedOp and factor chains included) is
    followed by a BatchNorm that computes the identity in eval mode; after training inside the block
    the norms are folded back, the structure is the original one and the folded graph computes what
    the normalised one did."""
    from compiler.finetune.renorm import Renormed, renormalized
    from compiler.ops import FusedOp

    torch.manual_seed(0)
    model = cnn().eval()
    for m in model.modules():  # statistics far from the identity, so folding them is visible
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
    x = torch.randn(16, 1, 28, 28)
    gm = compiler.compile(model, x[:1], pipeline=["cleanup", "fold_bn", "fuse"]).graph_module
    kinds = [type(m).__name__ for m in gm.modules()]
    ref = gm(x)
    with renormalized(gm, [(x[:8],), (x[8:],)]) as wrapped:
        assert wrapped == 2 == sum(isinstance(m, Renormed) for m in gm.modules())
        assert all(isinstance(m.op, Renormed) for m in gm.modules() if isinstance(m, FusedOp))
        gm.eval()
        torch.testing.assert_close(gm(x), ref, rtol=1e-4, atol=1e-4)  # starts as the identity on its data
        gm.train()
        opt = torch.optim.SGD(gm.parameters(), lr=0.1)
        for _ in range(3):  # move the norms' weights and statistics away from the identity
            opt.zero_grad()
            gm(x).square().mean().backward()
            opt.step()
        gm.eval()
        normalised = gm(x)
        assert (normalised - ref).abs().max() > 1e-2
    assert [type(m).__name__ for m in gm.modules()] == kinds  # the structure is the folded graph's again
    torch.testing.assert_close(gm(x), normalised, rtol=1e-4, atol=1e-4)
    with renormalized(model, [(x,)]) as wrapped:  # a model with BatchNorms of its own is left alone
        assert wrapped == 0


def test_finetune_renormalizes_a_folded_student_for_the_run():
    """FineTune.renormalize (the default) wraps the student's convs for the run and reports how many;
    off, the student trains as it is. Both hand back a BatchNorm-free student of the same structure."""
    torch.manual_seed(0)
    teacher = cnn().eval()
    x = torch.randn(64, 1, 28, 28)
    data = [(x[i:i + 16], teacher(x[i:i + 16]).argmax(1)) for i in range(0, 64, 16)]
    gm = compiler.compile(teacher, x[:1], pipeline=["cleanup", "fold_bn", {"name": "prune_channels", "ratio": 0.5}]).graph_module
    runs = {}
    for on in (True, False):
        s = __import__("copy").deepcopy(gm)
        r = finetune(s, teacher, data, config=FineTune(epochs=1, renormalize=on, **QUIET))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in s.modules())
        runs[on] = (r, s)
    assert runs[True][0].renormalized == 2 and runs[False][0].renormalized == 0
    on, off = runs[True][1].state_dict(), runs[False][1].state_dict()
    assert on.keys() == off.keys() and all(on[k].shape == off[k].shape for k in on)
    assert any(not torch.allclose(on[k], off[k]) for k in on)  # the norms changed how it trained
