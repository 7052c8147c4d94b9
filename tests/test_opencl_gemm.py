"""The OpenCL GEMM against torch's float32 matmul: odd shapes, each epilogue, views, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

cl = pytest.importorskip("pyopencl")

from compiler.errors import InputError  # noqa: E402
from runtime.opencl import programs  # noqa: E402
from runtime.opencl.device import open_device  # noqa: E402
from runtime.opencl.errors import NoOpenCLError, UnknownDeviceError, UnsupportedError  # noqa: E402
from runtime.opencl.gemm import Gemm, GemmConfig, pack_b  # noqa: E402

from .conftest import rel_err  # noqa: E402

TOL = 1e-4
ACT = {"none": lambda x: x, "relu": torch.relu, "relu6": F.relu6, "hardswish": F.hardswish}


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FXCOMPRESS_CACHE_DIR", str(tmp_path_factory.mktemp("opencl-cache")))
        try:
            device = open_device()
        except NoOpenCLError as e:
            if isinstance(e, UnknownDeviceError):  # a bad $FXCOMPRESS_OPENCL_DEVICE is an error, not a skip
                raise
            pytest.skip(f"no OpenCL platform: {e}")
        yield device
        programs.clear_memory_cache()


@pytest.mark.parametrize("m", [1, 7, 197])
@pytest.mark.parametrize("n", [10, 33, 1000])
@pytest.mark.parametrize("k", [3, 27, 577])
def test_matches_torch(device, m, n, k):
    a, b = torch.randn(m, k), torch.randn(k, n)
    assert rel_err(a @ b, Gemm(device, b)(a)) < TOL


@pytest.mark.parametrize("activation", sorted(ACT))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_epilogues(device, activation, bias, residual):
    m, n, k = 197, 33, 27  # a partial row block and a partial column panel
    a, b = torch.randn(m, k), torch.randn(k, n)
    bias_t, res_t = torch.randn(n), torch.randn(m, n)
    ref = a @ b + (bias_t if bias else 0) + (res_t if residual else 0)
    ref = ACT[activation](ref)
    out = Gemm(device, b, bias_t if bias else None, residual=residual, activation=activation)(
        a, res_t if residual else None)
    assert ref.abs().max() > 1 and (ref == 0).float().mean() < 0.9  # not trivially near zero
    assert rel_err(ref, out) < TOL


def test_views_with_offsets_and_strides(device):
    """A, the residual and C as column windows of wider row-major matrices (offset + leading dim)."""
    m, n, k = 37, 45, 19
    big_a, big_r = torch.randn(m, k + 11), torch.randn(m, n + 7)
    a, r = big_a[:, 5:5 + k], big_r[:, 3:3 + n]
    b, bias = torch.randn(k, n), torch.randn(n)
    g = Gemm(device, b, bias, residual=True, activation="relu")
    q = device.queue()
    a_buf = device.alloc(hostbuf=big_a.numpy())
    r_buf = device.alloc(hostbuf=big_r.numpy())
    c_host = np.full((m, n + 9), -7.0, np.float32)
    c_buf = device.alloc(hostbuf=c_host)
    g.enqueue(q, a_buf, c_buf, m, a_offset=5, lda=k + 11, residual_buf=r_buf, r_offset=3, ldr=n + 7,
              c_offset=4, ldc=n + 9)
    cl.enqueue_copy(q, c_host, c_buf)
    assert rel_err(torch.relu(a @ b + bias + r), torch.from_numpy(c_host[:, 4:4 + n])) < TOL
    assert (c_host[:, :4] == -7).all() and (c_host[:, 4 + n:] == -7).all()  # nothing written outside the view


@pytest.mark.parametrize("config", [GemmConfig(mr=4, nv=1, local=(2, 4)), GemmConfig(mr=8, nv=2, local=(1, 3))])
def test_other_blockings(device, config):
    a, b = torch.randn(61, 70), torch.randn(70, 50)
    assert rel_err(a @ b, Gemm(device, b, config=config)(a)) < TOL


def test_numpy_in_numpy_out(device):
    a, b = np.random.default_rng(0).standard_normal((5, 8), dtype=np.float32), np.eye(8, 3, dtype=np.float32)
    out = Gemm(device, b)(a)
    assert isinstance(out, np.ndarray) and np.allclose(out, a[:, :3], atol=1e-6)


def test_pack_b_layout():
    b = np.arange(3 * 40, dtype=np.float32).reshape(3, 40)
    packed = pack_b(b, nr=32)
    assert packed.shape == (2, 3, 32)
    assert (packed[0] == b[:, :32]).all() and (packed[1, :, :8] == b[:, 32:]).all() and (packed[1, :, 8:] == 0).all()


def test_bad_arguments_are_typed(device):
    b = torch.randn(4, 6)
    with pytest.raises(UnsupportedError, match=r"valid activations are \['hardswish', 'none', 'relu', 'relu6'\]"):
        Gemm(device, b, activation="gelu")
    with pytest.raises(InputError, match=r"\[M, 4\]"):
        Gemm(device, b)(torch.randn(3, 5))
    with pytest.raises(InputError, match="bias"):
        Gemm(device, b, torch.randn(5))
    with pytest.raises(InputError, match="residual"):
        Gemm(device, b, residual=True)(torch.randn(3, 4))


def test_batched_gemms_in_one_launch(device):
    bsz, m, n, k = 5, 37, 40, 19  # Winograd's 16 GEMMs of one shape, smaller
    a, b = torch.randn(bsz, m, k), torch.randn(bsz, k, n)
    g = Gemm(device, b)
    q = device.queue()
    abuf, cbuf = device.alloc(hostbuf=a.numpy()), device.alloc(bsz * m * n * 4)
    args = g.args((abuf, 0), (cbuf, 0), m, batch_strides=(m * k, m * n))
    g.kernel(q, g.global_size(m), g.local_dims, *[x for v in args for x in (v if isinstance(v, tuple) else (v,))])
    out = np.empty((bsz, m, n), np.float32)
    cl.enqueue_copy(q, out, cbuf)
    assert rel_err(torch.bmm(a, b), torch.from_numpy(out)) < TOL
    with pytest.raises(InputError, match="batch_strides"):
        g.args((abuf, 0), (cbuf, 0), m)
