"""GEMM with a fused epilogue on OpenCL: ``C = act(A @ B + bias + residual)``, B packed once.

``A`` is [M, K] (any row stride and offset, so a view works), ``B`` the weight as [K, N]: for an
``nn.Linear`` weight [N, K] pass ``weight.T``; for a conv lowered to GEMM, the [K = Cin*kh*kw, Cout]
matrix. ``pack_b`` lays B out in 32-column panels, K-major, which the kernel reads with aligned
float16 loads; see ``kernels/gemm.cl`` for the layouts and the design.

Design notes. GFLOP/s, this machine (Zen 4 EPYC, 2 cores; a float16 FMA chain peaks at 230, not the
500 of the Zen 5 in ANCHORS.md), kernel timed by wall time with a finish, each config in blocks
after a pause (benchmarks/gemm.py's method), torch.matmul in the same run. The machine was shared,
so treat differences under ~10% as noise.

  block (rows x cols)   1024^3   25088x64x576   1568x256x2304   8x1000x512
  8x32 (chosen)          196        176            211             79
  4x64                   206        185            211             80
  8x16                   199        176            211             80
  4x32                   192        166            202             73
  6x32                   111        172            209             57
  12x16                   81        177            211             60
  6x48                   109        129            190             58
  torch (same runs)      131         89            162             74

- 6 and 12 rows lost up to half their speed at 1024^3 in every sweep (6x32: 111 to 162 against
  196 to 217 for 8x32), but not at K = 2304. A power-of-two row stride of A (4 KiB) is the
  suspect; a padded-stride test (lda = 1040) was inconclusive on the loaded machine. 8 and 4
  rows showed no such drop, and 1x1 convs and Linear layers often have power-of-two K.
- Local sizes 1x1, 1x8 and 2x1 for 8x32: within 5% of each other; 1x34 (the prototype's) was
  209 against 217 in a call-by-call sweep. 1x1 is kept: no constraint on the global size.
- ``#pragma unroll 4`` on the k loop: PoCL's LLVM refuses it ("loop not unrolled"); the loop body
  is already 2 loads + 8 broadcasts + 16 FMAs against 3 instructions of loop control.
- A quiet sweep timed call by call, alternating with torch: 8x32 217, 4x32 219, 8x16 220, 4x64
  221, torch 176. Each method alone in its own process, quiet: ours 204, torch 189, numpy 198.
  benchmarks/gemm.py at 1024^3, two runs with other processes under 2% of the CPU: ours 208 and
  192, torch 169 and 141, numpy 187 and 167 (wall time, enqueue + finish).
- Edges: row clamping and the N padding of the packed B cost nothing in the inner loop, so
  nothing is padded on the host per call.
- Small M: rows past M are computed and dropped, so ``GemmConfig.for_rows`` gives fewer rows
  per work-item: M = 1, N = 1000, K = 512 ran 2.7x faster with 1 row than with 8.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyopencl as cl
import torch

from compiler.cost.families import gemm_rows
from compiler.errors import InputError, choices

from .device import Device
from .errors import UnsupportedError, translate
from .programs import build_program, kernel_source

ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3}


@dataclass(frozen=True, kw_only=True)
class GemmConfig:
    """The kernel's blocking and work-group shape, fixed when a ``Gemm`` is built."""

    mr: int = 8  # rows of C per work-item
    nv: int = 2  # float16 vectors per row: a work-item covers nr = 16 * nv columns
    local: tuple[int, int] = (1, 1)  # work-group shape (panels, row blocks)

    @property
    def nr(self) -> int:
        return 16 * self.nv

    @classmethod
    def for_rows(cls, m: int) -> GemmConfig:
        """The blocking for a GEMM known to have ``m`` rows: fewer rows per work-item when m is small,
        since rows past M are computed and thrown away (M = 1 runs 2.7x faster with mr = 1 than 8)."""
        return cls(mr=gemm_rows(m, cls().mr))


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def pack_b(b: np.ndarray | torch.Tensor, nr: int = GemmConfig().nr) -> np.ndarray:
    """Pack B [K, N] into panels [ceil(N / nr), K, nr]: panel p holds columns p*nr .. p*nr + nr - 1,
    one row of nr floats per k, zero past column N."""
    b = _numpy(b)
    if b.ndim != 2:
        raise InputError(f"pack_b expects B as a [K, N] matrix, got shape {tuple(b.shape)}")
    k, n = b.shape
    panels = -(-n // nr)
    padded = np.zeros((k, panels * nr), np.float32)
    padded[:, :n] = b
    return np.ascontiguousarray(padded.reshape(k, panels, nr).transpose(1, 0, 2))


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class Gemm:
    """``C = act(A @ B + bias (+ residual))`` for a fixed B [K, N], on one device.

    The program is built (or loaded from the cache) and B packed and uploaded once, here.
    ``enqueue`` only sets arguments and launches. Not thread-safe: kernel arguments are shared state.
    """

    def __init__(self, device: Device, b: np.ndarray | torch.Tensor, bias: np.ndarray | torch.Tensor | None = None,
                 *, residual: bool = False, activation: str = "none", config: GemmConfig = GemmConfig()):
        if activation not in ACTIVATIONS:
            raise UnsupportedError(f"unknown GEMM activation '{activation}', valid activations are {choices(ACTIVATIONS)}")
        self.device, self.config, self.activation, self.residual = device, config, activation, residual
        self.batch = int(b.shape[0]) if b.ndim == 3 else 0  # a [B, K, N] weight: B GEMMs in one launch
        packed = np.concatenate([pack_b(x, config.nr) for x in b]) if self.batch else pack_b(b, config.nr)
        self.K, self.N = int(b.shape[-2]), int(b.shape[-1])
        if self.K < 1 or self.N < 1:
            raise InputError(f"GEMM weight must be [K, N] with K, N >= 1, got shape {tuple(b.shape)}")
        options = [f"-DMR={config.mr}", f"-DNV={config.nv}", f"-DACTIVATION={ACTIVATIONS[activation]}"]
        options += ["-DBATCHED"] if self.batch else []
        self.b_buf = device.alloc(hostbuf=packed, what="uploading the packed GEMM weight", flags=cl.mem_flags.READ_ONLY)
        self.bias_buf = None
        if bias is not None:
            bias = _numpy(bias).reshape(-1)
            if bias.shape[0] != self.N:
                raise InputError(f"GEMM bias has {bias.shape[0]} elements, expected N = {self.N}")
            padded = np.zeros(packed.shape[0] * config.nr, np.float32)
            padded[: self.N] = bias
            self.bias_buf = device.alloc(hostbuf=padded, what="uploading the GEMM bias", flags=cl.mem_flags.READ_ONLY)
            options.append("-DHAS_BIAS")
        if residual:
            options.append("-DHAS_RESIDUAL")
        program = build_program(device, kernel_source("gemm.cl"), options, name="gemm.cl")
        self.kernel = cl.Kernel(program, "gemm")
        i32 = np.int32
        self.kernel.set_scalar_arg_dtypes([None, i32, i32, None, None, None, i32, i32, None, i32, i32, i32, i32, i32]
                                          + [i32] * (3 if self.batch else 0))
        self.panels = packed.shape[0] // max(self.batch, 1)
        self.local_size = config.local
        self._queue: cl.CommandQueue | None = None

    def global_size(self, m: int) -> tuple[int, ...]:
        l0, l1 = self.local_size
        size = (_round_up(self.panels, l0), _round_up(-(-m // self.config.mr), l1))
        return size + (self.batch,) if self.batch else size

    @property
    def local_dims(self) -> tuple[int, ...]:
        return self.local_size + (1,) if self.batch else self.local_size

    def args(self, a, c, m: int, *, residual=(None, 0), lda: int | None = None, ldc: int | None = None,
             ldr: int | None = None, batch_strides: tuple[int, int] | None = None) -> list:
        """The kernel's arguments in order, for ``kernel(...)`` or ``ops.Launch``. ``a``, ``c`` and
        ``residual`` are (buffer, element offset) pairs, or anything ``ops.Launch`` resolves to one;
        by default rows are packed (lda = K, ldc = ldr = N). A batched Gemm takes ``batch_strides``,
        the elements between consecutive A and C matrices."""
        if (residual[0] is None) == self.residual:
            raise InputError("this Gemm was built " + ("with" if self.residual else "without")
                             + " a residual; pass one accordingly")
        if (batch_strides is None) != (not self.batch):
            raise InputError("a batched Gemm (a [B, K, N] weight) takes batch_strides, and only it")
        n = self.N
        out = [a, self.K if lda is None else lda, self.b_buf, self.bias_buf, residual, n if ldr is None else ldr,
               c, n if ldc is None else ldc, m, n, self.K]
        if self.batch:
            out += [batch_strides[0], self.panels * self.K * self.config.nr, batch_strides[1]]
        return out

    def enqueue(self, queue: cl.CommandQueue, a_buf: cl.Buffer, c_buf: cl.Buffer, m: int, *,
                a_offset: int = 0, lda: int | None = None, c_offset: int = 0, ldc: int | None = None,
                residual_buf: cl.Buffer | None = None, r_offset: int = 0, ldr: int | None = None,
                wait_for: list[cl.Event] | None = None) -> cl.Event:
        """Launch on ``queue`` without waiting. Offsets and leading dimensions count float32 elements."""
        args = self.args((a_buf, a_offset), (c_buf, c_offset), m, residual=(residual_buf, r_offset),
                         lda=lda, ldc=ldc, ldr=ldr)
        flat = [x for a in args for x in (a if isinstance(a, tuple) else (a,))]
        try:
            return self.kernel(queue, self.global_size(m), self.local_size, *flat, wait_for=wait_for)
        except cl.Error as e:
            raise translate(e, what=f"launching a {m}x{self.N}x{self.K} GEMM", device=self.device.cl_device) from e

    def __call__(self, a: np.ndarray | torch.Tensor, residual: np.ndarray | torch.Tensor | None = None):
        """Run on host arrays and wait: [M, K] in, [M, N] out, numpy or torch as given. For tests."""
        as_torch = isinstance(a, torch.Tensor)
        a = _numpy(a)
        if a.ndim != 2 or a.shape[1] != self.K or a.shape[0] < 1:
            raise InputError(f"GEMM input must be [M, {self.K}] with M >= 1, got shape {a.shape}")
        m = a.shape[0]
        if self._queue is None:
            self._queue = self.device.queue()
        a_buf = self.device.alloc(hostbuf=a, what="uploading the GEMM input", flags=cl.mem_flags.READ_ONLY)
        c_buf = self.device.alloc(m * self.N * 4, what="allocating the GEMM output")
        r_buf = None
        if residual is not None:
            r = _numpy(residual)
            if r.shape != (m, self.N):
                raise InputError(f"GEMM residual must be [{m}, {self.N}], got shape {r.shape}")
            r_buf = self.device.alloc(hostbuf=r, what="uploading the GEMM residual", flags=cl.mem_flags.READ_ONLY)
        out = np.empty((m, self.N), np.float32)
        self.enqueue(self._queue, a_buf, c_buf, m, residual_buf=r_buf)
        try:
            cl.enqueue_copy(self._queue, out, c_buf)
        except cl.Error as e:
            raise translate(e, what=f"running a {m}x{self.N}x{self.K} GEMM", device=self.device.cl_device) from e
        return torch.from_numpy(out) if as_torch else out
