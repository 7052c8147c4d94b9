"""Property test: random CNNs mixing residual adds, concat, chunk, channel shuffle and groups in
{1, g, C} prune without shape errors and satisfy the masking oracle."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import compiler
from passes.prune_channels import PruneChannels
from passes.pruning.depgraph import analyse
from passes.pruning.shrink import masked_forward

from .conftest import rel_err

OPS = ["conv", "grouped", "depthwise", "residual", "concat", "chunk", "shuffle"]


def conv_bn(cin, cout, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class RandomNet(nn.Module):
    def __init__(self, ops: list[str], widths: list[int]):
        super().__init__()
        self.stem = conv_bn(3, 8)
        c, self.ops, self.blocks = 8, [], nn.ModuleList()
        for op, w in zip(ops, widths):
            if op == "conv":
                self.blocks.append(conv_bn(c, w)); c = w
            elif op == "grouped":
                self.blocks.append(conv_bn(c, 2 * c, groups=2)); c = 2 * c
            elif op == "depthwise":
                self.blocks.append(conv_bn(c, c, groups=c))
            elif op == "residual":
                self.blocks.append(conv_bn(c, c))
            elif op == "concat":
                self.blocks.append(conv_bn(c, w)); c = c + w
            elif op == "chunk":
                if c % 2:
                    continue
                self.blocks.append(conv_bn(c // 2, c // 2))
            elif op == "shuffle":
                if c % 2:
                    continue
                self.blocks.append(nn.Identity())
            self.ops.append(op)
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)
        for op, block in zip(self.ops, self.blocks):
            if op == "residual":
                x = x + block(x)
            elif op == "concat":
                x = torch.cat([x, block(x)], dim=1)
            elif op == "chunk":
                a, b = x.chunk(2, dim=1)
                x = torch.cat([a, block(b)], dim=1)
            elif op == "shuffle":
                n, c, h, w = x.shape
                x = x.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
            else:
                x = block(x)
        return self.head(x.mean((2, 3)))


@settings(max_examples=30, deadline=None)
@given(
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=6),
    widths=st.lists(st.sampled_from([4, 6, 8, 12]), min_size=6, max_size=6),
    ratio=st.sampled_from([0.2, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_random_cnns_prune_and_match_masking_oracle(ops, widths, ratio, seed):
    torch.manual_seed(seed)
    model = RandomNet(ops, widths).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 8, 8)
    gm = compiler.trace(model, x)
    p = PruneChannels(ratio=ratio, seed=seed, importance="random")
    cg = analyse(gm)
    removed = {e for u in p.plan(gm, cg)["removed_units"] for e in u}
    oracle = masked_forward(gm, cg, removed, x)
    pruned, report = compiler.PassManager([p]).run(compiler.trace(model, x), (x,))
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == (2, 3)
    assert rel_err(oracle, out) < 1e-4
    assert report.row("prune_channels").params <= report.row("trace").params
