"""Numerics of factorization, checked through the layers they build against the original layer."""
import pytest
import torch
from torch import nn

from passes.decompose import METHODS, parse_rank, resolve_ranks
from passes.decompose.cp import cp_conv
from passes.decompose.tt import factor_modes
from passes.decompose.vbmf import evbmf_rank
from passes.factor_layers import build_chain

from .conftest import rel_err

CONV_METHODS = [name for name, kind in METHODS if kind == "conv"]
LINEAR_METHODS = [name for name, kind in METHODS if kind == "linear"]


def run_chain(chain, x):
    for m in chain:
        x = m(x)
    return x


def conv_layer(**kw):
    conv = nn.Conv2d(6, 10, 3, bias=True, **kw)
    return conv.eval()


@pytest.mark.parametrize("method", [m for m in CONV_METHODS if m != "cp"])
@pytest.mark.parametrize("conv_kw", [dict(padding=1), dict(stride=2, padding=1), dict(dilation=2, padding="same"),
                                     dict(padding="valid"), dict(stride=(2, 1), padding=(1, 0))])
def test_full_rank_conv_is_exact(method, conv_kw):
    torch.manual_seed(0)
    conv = conv_layer(**conv_kw)
    m = METHODS[(method, "conv")]
    full = m.bounds(tuple(conv.weight.shape))
    chain = build_chain(method, conv, m.decompose(conv.weight.detach(), full))
    x = torch.randn(2, 6, 11, 9)
    with torch.no_grad():
        assert rel_err(conv(x), run_chain(chain, x)) < 1e-4
    assert chain[-1].bias is not None and all(c.bias is None for c in chain[:-1])


def test_cp_at_the_true_cp_rank_is_exact():
    """ALS need not reach an exact fit at an arbitrary rank; at a kernel's true CP rank it does."""
    torch.manual_seed(0)
    r = 3  # <= every mode size, so the SVD initialisation spans the factors
    w = torch.einsum("or,cr,hr,wr->ochw", *(torch.randn(d, r) for d in (10, 6, 3, 3)))
    conv = nn.Conv2d(6, 10, 3, padding=1, stride=2).eval()
    with torch.no_grad():
        conv.weight.copy_(w)
    # ALS in float32 stalls near 1e-3 on this kernel; float64 shows the factorization itself is exact.
    chain = build_chain("cp", conv, [f.float() for f in cp_conv(w.double(), r, n_iter_max=300)])
    assert [c.groups for c in chain] == [1, r, r, 1]
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        assert rel_err(conv(x), run_chain(chain, x)) < 1e-4


@pytest.mark.parametrize("method", LINEAR_METHODS)
def test_full_rank_linear_is_exact(method):
    torch.manual_seed(0)
    lin = nn.Linear(96, 64).eval()
    m = METHODS[(method, "linear")]
    chain = build_chain(method, lin, m.decompose(lin.weight.detach(), m.bounds((64, 96))))
    x = torch.randn(3, 7, 96)
    with torch.no_grad():
        assert rel_err(lin(x), run_chain(chain, x)) < 1e-4


@pytest.mark.parametrize("key", sorted(METHODS))
def test_reconstruction_error_falls_as_rank_grows(key):
    torch.manual_seed(0)
    w = torch.randn(16, 12, 3, 3) if key[1] == "conv" else torch.randn(64, 48)
    m = METHODS[key]
    errs = []
    for f in (0.1, 0.3, 0.6, 1.0):
        ranks = resolve_ranks(parse_rank(f), m, w)
        errs.append(((m.reconstruct(m.decompose(w, ranks)) - w).norm() / w.norm()).item())
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    if key[0] != "cp":
        assert errs[-1] < 1e-5


# (40, 24, 1, 1) at (10, 6): r_out exceeds r_in * kh * kw, so TensorLy pads its factor (and warns)
@pytest.mark.filterwarnings("ignore:Trying to compute SVD with n_eigenvecs")
@pytest.mark.parametrize("shape, ranks", [((64, 48, 3, 3), (48, 36)), ((64, 48, 3, 3), (12, 8)),
                                          ((32, 3, 7, 7), (16, 2)), ((40, 24, 1, 1), (10, 6))])
def test_tucker2_hooi_reaches_tensorlys_partial_tucker_error(shape, ranks):
    """Our Tucker-2 HOOI (written for speed, see tucker.py) against TensorLy's partial_tucker, the
    same algorithm from the same start: the same reconstruction error, on a kernel with a decaying
    spectrum (where HOOI's sweeps matter) and on a plain random one."""
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    from passes.decompose.tucker import HOOI_ITERS, tucker2, tucker2_reconstruct

    torch.manual_seed(0)
    plain = torch.randn(shape)
    q = torch.linalg.qr(torch.randn(shape[0], shape[0]))[0]
    decaying = torch.einsum("ab,bchw->achw", q * torch.linspace(1, 0.02, shape[0]), plain)
    for w in (plain, decaying):
        with tl.backend_context("pytorch"), tl.tenalg.backend_context("einsum"):
            (core, (u_out, u_in)), _ = partial_tucker(w, rank=list(ranks), modes=[0, 1], n_iter_max=HOOI_ITERS,
                                                      init="svd", tol=1e-5)
        theirs = rel_err(w, torch.einsum("ab,bchw,dc->adhw", u_out, core, u_in))
        factors = tucker2(w, ranks)
        assert [tuple(f.shape) for f in factors] == [(ranks[1], shape[1], 1, 1), (*ranks, *shape[2:]),
                                                     (shape[0], ranks[0], 1, 1)]
        ours = rel_err(w, tucker2_reconstruct(factors))
        assert 0.01 < theirs and abs(ours - theirs) < 1e-4 * theirs, (ours, theirs)
        fro = [((tucker2_reconstruct(tucker2(w, ranks, n_iter_max=n)) - w).norm() / w.norm()).item() for n in (0, 10)]
        assert fro[1] <= fro[0] + 1e-6  # the sweeps improve on their SVD start, never worsen it
        # the factors are orthonormal, as HOOI's are: the chain's 1x1 convs neither blow up nor shrink
        for u in (factors[0][:, :, 0, 0].T, factors[2][:, :, 0, 0]):
            assert torch.allclose(u.T @ u, torch.eye(u.shape[1]), atol=1e-4)


@pytest.mark.parametrize(
    "spec, kind, value",
    [(8, "int", 8), (0.25, "fraction", 0.25), (1.0, "fraction", 1.0), ("energy:0.9", "energy", 0.9),
     ("params:0.3", "params", 0.3), ("vbmf", "vbmf", None)],
)
def test_parse_rank(spec, kind, value):
    r = parse_rank(spec)
    assert (r.kind, r.value) == (kind, value)


@pytest.mark.parametrize(
    "spec, match",
    [(0, "rank must be >= 1"), (-3, "rank must be >= 1"), (1.5, r"in \(0, 1\]"), (0.0, r"in \(0, 1\]"),
     ("energy:0", r"energy must be in \(0, 1\]"), ("energy:1.2", r"energy must be in \(0, 1\]"),
     ("energy:x", "is not a number"), ("params:1", r"in \(0, 1\)"), ("fast", "rank must be an int >= 1"), (True, "rank must be")],
)
def test_parse_rank_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_rank(spec)


def test_resolve_ranks_forms():
    torch.manual_seed(0)
    w = torch.randn(32, 16, 3, 3)
    tucker = METHODS[("tucker2", "conv")]
    assert tucker.bounds(tuple(w.shape)) == (32, 16)
    assert resolve_ranks(parse_rank(8), tucker, w) == (8, 8)
    assert resolve_ranks(parse_rank(20), tucker, w) == (20, 16)  # clipped to the slot's full rank
    assert resolve_ranks(parse_rank(0.5), tucker, w) == (16, 8)
    with pytest.raises(ValueError, match=r"rank 40 is above full rank 32"):
        resolve_ranks(parse_rank(40), tucker, w)
    r = resolve_ranks(parse_rank("params:0.3"), tucker, w)
    assert tucker.params(tuple(w.shape), r) <= 0.3 * w.numel()
    assert tucker.params(tuple(w.shape), (r[0] + 2, r[1] + 1)) > 0.3 * w.numel() * 0.9
    # energy: exact low-rank kernel needs exactly its rank
    low = torch.randn(32, 4) @ torch.randn(4, 16 * 9)
    svd = METHODS[("svd", "conv")]
    assert resolve_ranks(parse_rank("energy:0.999"), svd, low.reshape(32, 16, 3, 3)) == (4,)
    assert resolve_ranks(parse_rank("energy:1.0"), svd, w)[0] == 32


def test_vbmf_recovers_signal_rank_under_noise():
    torch.manual_seed(0)
    signal = torch.randn(60, 5) @ torch.randn(5, 80) * 3
    noisy = signal + 0.3 * torch.randn(60, 80)
    s = torch.linalg.svdvals(noisy).numpy()
    assert evbmf_rank(s, (60, 80)) == 5
    assert evbmf_rank(torch.linalg.svdvals(torch.randn(60, 80)).numpy(), (60, 80)) <= 1


def test_factor_modes():
    assert factor_modes(4096, 3) == (16, 16, 16)
    assert factor_modes(1000, 3) == (10, 10, 10)
    assert factor_modes(768, 3) == (12, 8, 8)
    assert factor_modes(13, 2) == (13, 1)
