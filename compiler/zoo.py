"""The torchvision and timm model zoos, with weights randomised for numeric checks."""
from __future__ import annotations

import importlib
import math

import torch
from torch import nn

from .compat import patch_torchvision

# name -> input size (square) for fast tests: small where the model allows. vit_b_16 and maxvit_t fix 224;
# alexnet and vgg16 need 224 because the legacy ONNX exporter only handles adaptive pooling whose
# output size divides the input size.
ZOO: dict[str, int] = {
    "resnet18": 64, "resnet50": 64, "resnext50_32x4d": 64, "wide_resnet50_2": 64,
    "mobilenet_v2": 64, "mobilenet_v3_small": 64, "mobilenet_v3_large": 64,
    "efficientnet_b0": 64, "efficientnet_v2_s": 64, "vgg16": 224, "alexnet": 224, "densenet121": 64,
    "regnet_x_400mf": 64, "regnet_y_400mf": 64, "shufflenet_v2_x1_0": 64, "squeezenet1_1": 64,
    "mnasnet0_5": 64, "googlenet": 64, "inception_v3": 80, "convnext_tiny": 64,
    "vit_b_16": 224, "swin_t": 64, "swin_v2_t": 64, "maxvit_t": 224,
}

def import_torchvision():
    """Import torchvision on CPU-only torch (see ``compiler.compat``)."""
    patch_torchvision()
    return importlib.import_module("torchvision")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Randomise BatchNorm statistics and affine terms, and re-draw zero-initialised weights.

    Default inits leave some zoo outputs near zero (mobilenet_v3, efficientnet, the ViT head), so a
    numeric check on them would prove nothing.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                # timm zero-initialises the last BN of each residual block: small gammas there keep
                # the residual sums from growing block after block into a float32-chaotic network
                scale = 0.25 if m.affine and not m.weight.abs().gt(0).any() else 1.0
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_((torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75) * scale)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if p.dim() >= 1 and not p.abs().gt(0).any():  # zero-initialised (heads, layer scales, biases)
                bound = 1.0 / math.sqrt(max(1, p.shape[-1] if p.dim() > 1 else p.numel()))
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
    return model.eval()


def build(name: str, *, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A randomised zoo model in eval mode and a batch-1 example input of its test size."""
    tv = import_torchvision()
    if name not in ZOO:
        raise KeyError(f"unknown zoo model '{name}', known: {sorted(ZOO)}")
    torch.manual_seed(seed)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = getattr(tv.models, name)(weights=None, **kwargs)
    size = ZOO[name]
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    return randomize(model, seed), x


# timm (1.0.31, pretrained=False): name -> (family, kind). "cnn" models must run wholly on our OpenCL
# kernels; "hybrid" and "transformer" ones are held to parity. The tuning set is what the tests run
# and the rewrites were developed against; TIMM_HOLDOUT is never tuned on - benchmarks/timm_zoo.py
# reports it beside the tuning set.
TIMM_ZOO: dict[str, tuple[str, str]] = {
    "resnet18": ("ResNet", "cnn"), "resnet26d": ("ResNet", "cnn"), "seresnet18": ("ResNet", "cnn"),
    "resnext26ts": ("ResNet", "cnn"), "ecaresnet26t": ("ResNet", "cnn"), "skresnet18": ("ResNet", "cnn"),
    "res2net50_14w_8s": ("ResNet", "cnn"), "resnest14d": ("ResNeSt", "cnn"),
    "efficientnet_b0": ("EfficientNet", "cnn"), "tf_efficientnet_lite0": ("EfficientNet", "cnn"),
    "mobilenetv2_100": ("MobileNet", "cnn"), "mobilenetv3_large_100": ("MobileNet", "cnn"),
    "mobilenetv3_small_050": ("MobileNet", "cnn"), "mobilenetv1_100": ("MobileNet", "cnn"),
    "mobilenetv4_conv_small": ("MobileNet", "cnn"),
    "mobileone_s0": ("MobileOne", "cnn"), "repvgg_a0": ("RepVGG", "cnn"),
    "regnetx_002": ("RegNet", "cnn"), "regnety_002": ("RegNet", "cnn"), "regnetz_005": ("RegNet", "cnn"),
    "cspresnet50": ("CSPNet", "cnn"), "cs3darknet_s": ("CSPNet", "cnn"), "darknet17": ("CSPNet", "cnn"),
    "dla46_c": ("DLA", "cnn"), "dpn48b": ("DPN", "cnn"), "hrnet_w18_small": ("HRNet", "cnn"),
    "ghostnet_050": ("GhostNet", "cnn"), "ghostnetv2_100": ("GhostNet", "cnn"),
    "rexnet_100": ("ReXNet", "cnn"), "mixnet_s": ("MixNet", "cnn"), "lcnet_050": ("LCNet", "cnn"),
    "mnasnet_small": ("NAS nets", "cnn"), "fbnetc_100": ("NAS nets", "cnn"), "hardcorenas_a": ("NAS nets", "cnn"),
    "ese_vovnet19b_dw": ("VoVNet", "cnn"), "hgnetv2_b0": ("HGNet", "cnn"),
    "convnext_atto": ("ConvNeXt", "cnn"),
    "vit_tiny_patch16_224": ("ViT", "transformer"), "deit_tiny_patch16_224": ("DeiT", "transformer"),
    "levit_128s": ("LeViT", "hybrid"), "mobilevit_xxs": ("MobileViT", "hybrid"),
    "efficientformer_l1": ("EfficientFormer", "hybrid"), "fastvit_t8": ("FastViT", "hybrid"),
    "efficientvit_b0": ("EfficientViT", "hybrid"), "efficientvit_m0": ("EfficientViT", "hybrid"),
}
TIMM_HOLDOUT: dict[str, tuple[str, str]] = {
    "efficientnetv2_rw_t": ("EfficientNet", "cnn"), "tinynet_a": ("EfficientNet", "cnn"),
    "mobilenetv2_050": ("MobileNet", "cnn"), "rexnetr_100": ("ReXNet", "cnn"), "dla34": ("DLA", "cnn"),
    "dpn68": ("DPN", "cnn"), "hrnet_w18_small_v2": ("HRNet", "cnn"), "cspdarknet53": ("CSPNet", "cnn"),
    "spnasnet_100": ("NAS nets", "cnn"), "semnasnet_050": ("NAS nets", "cnn"), "lcnetv2_small": ("LCNet", "cnn"),
    "densenet121": ("DenseNet", "cnn"), "xception41": ("Xception", "cnn"), "gernet_s": ("GENet", "cnn"),
    "selecsls42b": ("SelecSLS", "cnn"), "fasternet_t0": ("FasterNet", "cnn"), "starnet_s050": ("StarNet", "cnn"),
    "repghostnet_050": ("GhostNet", "cnn"), "repvit_m0_9": ("RepViT", "cnn"),
    "inception_next_atto": ("InceptionNeXt", "cnn"), "convnextv2_atto": ("ConvNeXt", "cnn"),
    "edgenext_xx_small": ("EdgeNeXt", "hybrid"), "poolformer_s12": ("MetaFormer", "hybrid"),
    "nf_regnet_b0": ("NFNet", "cnn"), "mobilevitv2_050": ("MobileViT", "hybrid"),
    "efficientformerv2_s0": ("EfficientFormer", "hybrid"), "tiny_vit_5m_224": ("TinyViT", "hybrid"),
    "pit_ti_224": ("PiT", "transformer"), "coat_lite_tiny": ("CoaT", "transformer"),
    "swin_tiny_patch4_window7_224": ("Swin", "transformer"), "mixer_s32_224": ("MLP-Mixer", "transformer"),
    "resmlp_12_224": ("ResMLP", "transformer"), "cait_xxs24_224": ("CaiT", "transformer"),
    "eva02_tiny_patch14_224": ("EVA", "transformer"), "pvt_v2_b0": ("PVT", "transformer"),
    "maxvit_nano_rw_256": ("MaxViT", "hybrid"),
}
TIMM_SIZE = 64  # input size where the model allows it; fixed-size models (ViT, LeViT, ...) use their own


def import_timm():
    """Import timm (it imports torchvision, see ``compiler.compat``)."""
    patch_torchvision()
    return importlib.import_module("timm")


def build_timm(name: str, *, seed: int = 0, batch: int = 1) -> tuple[nn.Module, torch.Tensor]:
    """A randomised timm model (``pretrained=False``) in eval mode and an example input of its test size."""
    timm = import_timm()
    if name not in timm.list_models():
        raise KeyError(f"unknown timm model '{name}'; timm.list_models() lists the {len(timm.list_models())} known")
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    cfg = model.pretrained_cfg
    size = cfg["input_size"][-1] if cfg.get("fixed_input_size") else TIMM_SIZE
    x = torch.randn(batch, *cfg["input_size"][:-2], size, size, generator=torch.Generator().manual_seed(seed + 1))
    return randomize(model, seed), x
