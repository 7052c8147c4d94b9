"""One test per channel rule: norms, grouped convs, stored per-channel tensors, slicing and splits,
pixel shuffle, attention heads, Taylor importance. Each checks the masking oracle, the shrunk
structure, and that the constants counting channels were recounted."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compiler
from compiler.errors import PassError, PipelineError, PruningError
from compiler.ops import Attention
from passes.prune_channels import PruneChannels
from passes.pruning.depgraph import analyse
from passes.pruning.shrink import shrink

from .conftest import rel_err
from .test_prune_channels import prune_and_oracle


def check(model, x, **kw):
    gm, report, oracle, out = prune_and_oracle(model.eval(), x, **kw)
    assert rel_err(oracle, out) < 1e-4
    row = report.row("prune_channels")
    assert row.modified and row.params < report.row("trace").params
    return gm, row


class Grouped(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3)
        self.g = nn.Conv2d(16, 32, 3, groups=groups)
        self.head = nn.Conv2d(32, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.g(self.a(x))))


@pytest.mark.parametrize("groups", [2, 4, 16])
def test_grouped_conv_keeps_its_groups_equal(groups):
    gm, row = check(Grouped(groups), torch.randn(2, 3, 9, 9), ratio=0.5)
    g = gm.get_submodule("g")
    assert g.groups == groups and g.in_channels % groups == 0 and g.out_channels % groups == 0
    assert g.weight.shape == (g.out_channels, g.in_channels // groups, 3, 3)
    # with one input channel per group, all of a's channels form a single unit, which is kept
    assert gm.get_submodule("a").out_channels == g.in_channels == (16 if groups == 16 else 8)
    assert g.out_channels < 32


class ChannelsLast(nn.Module):
    """A ConvNeXt block: depthwise conv, permute, LayerNorm, MLP, layer scale, residual."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.scale = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.final_w, self.final_b = nn.Parameter(torch.rand(c) + 0.5), nn.Parameter(torch.randn(c))
        self.head = nn.Linear(c, 3)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        x = x + self.scale * y
        x = F.layer_norm(x.permute(0, 2, 3, 1), (16,), self.final_w, self.final_b).mean((1, 2))
        return self.head(x)


def test_layer_norm_and_layer_scale_follow_the_residual_stream():
    model = ChannelsLast()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_()
    gm, _ = check(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    c = gm.get_submodule("stem").out_channels
    assert c == 8
    assert gm.get_submodule("norm").normalized_shape == (c,) and gm.get_submodule("norm").weight.shape == (c,)
    assert gm.scale.shape == (c, 1, 1) and gm.final_w.shape == gm.final_b.shape == (c,)
    assert gm.get_submodule("fc2").out_features == gm.get_submodule("head").in_features == c


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3)
        self.gn = nn.GroupNorm(4, 16)
        self.b = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.gn(self.a(x))))


def test_group_norm_loses_the_same_count_in_every_group():
    model = GroupNormNet()
    with torch.no_grad():
        model.gn.weight.uniform_(0.5, 1.5)
        model.gn.bias.normal_()
    gm, _ = check(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    gn = gm.get_submodule("gn")
    assert (gn.num_groups, gn.num_channels) == (4, 8) and gm.get_submodule("a").out_channels == 8


class Slices(nn.Module):
    """Split with sizes, a channel slice, narrow and a reshape with a constant channel count."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 24, 3, padding=1)
        self.p, self.q = nn.Conv2d(8, 4, 1), nn.Conv2d(16, 4, 1)
        self.r, self.s = nn.Conv2d(8, 4, 1), nn.Conv2d(6, 4, 1)
        self.head = nn.Linear(24 * 16, 2)

    def forward(self, x):
        y = self.a(x)
        p, q = torch.split(y, [8, 16], dim=1)
        z = torch.cat([self.p(p), self.q(q), self.r(y[:, 4:12]), self.s(y.narrow(1, 10, 6)), y[:, -8:]], 1)
        return self.head(z.reshape(2, 24, 16).flatten(1))


def test_split_slice_narrow_and_view_constants_are_recounted():
    gm, _ = check(Slices(), torch.randn(2, 3, 4, 4), ratio=0.5)
    a = gm.get_submodule("a").out_channels
    assert a < 24
    assert gm.get_submodule("p").in_channels + gm.get_submodule("q").in_channels == a
    assert gm.get_submodule("r").in_channels < 8 or gm.get_submodule("s").in_channels < 6
    gm.graph.lint()
    compiler.trace(gm, torch.randn(2, 3, 4, 4))  # still traces and runs at the new widths


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.PixelShuffle(2)
        self.b = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Conv2d(32, 2, 1)

    def forward(self, x):
        return self.head(F.pixel_unshuffle(self.b(self.up(self.a(x))), 2))


def test_pixel_shuffle_prunes_whole_blocks():
    gm, _ = check(Shuffle(), torch.randn(2, 3, 6, 6), ratio=0.5)
    a, b = gm.get_submodule("a").out_channels, gm.get_submodule("b").in_channels
    assert a % 4 == 0 and b == a // 4 < 4  # r^2 = 4 input channels per shuffled channel go together
    assert gm.get_submodule("head").in_channels == 4 * gm.get_submodule("b").out_channels < 32


class Encoder(nn.Module):
    def __init__(self, e=32, heads=8, batch_first=True):
        super().__init__()
        self.embed = nn.Linear(6, e)
        self.attn = nn.MultiheadAttention(e, heads, batch_first=batch_first)
        self.norm = nn.LayerNorm(e)
        self.mlp = nn.Sequential(nn.Linear(e, 64), nn.GELU(), nn.Linear(64, e))
        self.head = nn.Linear(e, 3)
        self.tokens = 1 if batch_first else 0

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.mlp(self.norm(x))
        return self.head(x.mean(self.tokens))


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_heads_are_pruned_and_can_be_pruned_again(batch_first, tmp_path):
    x = torch.randn(2, 5, 6) if batch_first else torch.randn(5, 2, 6)
    model = Encoder(batch_first=batch_first)
    gm, row = check(model, x, ratio=0.5)
    attn = gm.get_submodule("attn")
    assert isinstance(attn, Attention) and (attn.num_heads, attn.head_dim, attn.embed_dim) == (4, 4, 32)
    assert [g["unit"] for g in row.details].count("heads") == 1
    assert gm.get_submodule("mlp.0").out_features == 32
    again, row2 = check(gm, x, ratio=0.5)  # Attention is a leaf: its heads are found again
    assert again.get_submodule("attn").num_heads == 2
    cm = compiler.compile(again, x)
    assert cm.export_onnx(tmp_path / "a.onnx").max_rel_err < 1e-4


def test_taylor_importance_removes_channels_without_gradient_signal():
    model = Grouped(1)
    with torch.no_grad():
        model.head.weight[:, ::2] = 0  # even channels of g cannot change the loss
    x, y = torch.randn(4, 3, 9, 9), torch.randint(0, 2, (4, 5, 5))
    data = [(x, y)]
    gm, _ = check(model, x, ratio=0.5, importance="taylor", data=data)
    kept = gm.meta["fxcompress.pruning_plan"].keep["g"]
    assert kept == list(range(1, 32, 2))


def test_taylor_without_data_is_a_typed_error():
    with pytest.raises(PruningError, match="importance='taylor' needs data"):
        PruneChannels(importance="taylor")
    with pytest.raises(PipelineError, match="needs data"):
        compiler.PassManager([{"name": "prune_channels", "importance": "taylor"}])
    with pytest.raises(PassError, match=r"'prune_channels' pass .* needs \(inputs, targets\) batches"):
        x = torch.randn(1, 3, 9, 9)
        compiler.PassManager([PruneChannels(importance="taylor", data=[x])]).run(compiler.trace(Grouped(1), x), (x,))


def test_pruning_everything_in_a_group_is_a_typed_error():
    x = torch.randn(2, 3, 4, 4)
    gm = compiler.trace(Slices(), x)
    cg = analyse(gm)
    a = next(s for s in cg.spaces if s.path == "a")
    with pytest.raises(PruningError, match="every channel of piece 0 of split 'split'"):
        shrink(gm, cg, {(a.id, i) for i in range(8)})
    with pytest.raises(PruningError, match="every channel of 'a'"):
        shrink(compiler.trace(Slices(), x), cg, {(a.id, i) for i in range(24)})
