"""CIFAR backbones registered as timm models (importing this module registers them).

* ``resnet20``: the CIFAR ResNet-20 of He et al. 2016, section 4.2 (0.27 M parameters).
* ``mobilenetv2_050_cifar`` / ``mobilenetv2_100_cifar``: timm's MobileNetV2 (width 0.5 / 1.0), built
  by timm's EfficientNet builder with the strides changed for 32x32 input (total stride 8, 4x4 final map).

All share a CIFAR-10 pretrained cfg (10 classes, 3x32x32, CIFAR mean/std) without a hub id or url:
weights come from a local file, ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay={"file": path, "num_classes": 10})`` (see dqss.cls.models.create_backbone).
"""
from __future__ import annotations

from functools import partial

import timm
import torch
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, is_model_in_modules, register_model
from timm.models._efficientnet_builder import decode_arch_def, resolve_act_layer, resolve_bn_args, round_channels
from timm.models.efficientnet import EfficientNet, _create_effnet
from torch import nn

__all__ = ["CifarResNet", "BasicBlock", "PadShortcut", "CIFAR10_MEAN", "CIFAR10_STD", "MODEL_NAMES"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
MODEL_NAMES = ("resnet20", "mobilenetv2_050_cifar", "mobilenetv2_100_cifar")

_MODULE = __name__.split(".")[-1]  # the module name timm's registry files these under
for _name in MODEL_NAMES:
    if timm.is_model(_name) and not is_model_in_modules(_name, [_MODULE]):
        raise RuntimeError(f"timm {timm.__version__} already has a model named '{_name}'; "
                           "rename the CIFAR backbone in dqss/cls/cifar_models.py")


# -- ResNet for CIFAR ---------------------------------------------------------------------------
class PadShortcut(nn.Module):
    """Option-A shortcut: parameter-free spatial subsampling plus zero channels."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        if out_chs < in_chs:
            raise ValueError(f"option-A shortcut cannot shrink channels ({in_chs} -> {out_chs})")
        self.stride = stride
        self.pad_front = (out_chs - in_chs) // 2
        self.pad_back = out_chs - in_chs - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_front}, {self.pad_back})"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        if stride == 1 and in_chs == out_chs:
            self.downsample = nn.Identity()
        elif shortcut == "A":
            self.downsample = PadShortcut(in_chs, out_chs, stride)
        else:  # 'B': 1x1 projection
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_chs))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 input: 3x3 stem (no max-pool) and three stages of n BasicBlocks.

    Args:
        layers: blocks per stage (n, n, n); (3, 3, 3) is ResNet-20.
        channels: stage widths.
        shortcut: 'A' (parameter-free, the paper's CIFAR choice) or 'B' (1x1 conv projection).
        zero_init_last: zero the last BN's scale in each block (off in the paper).
    """

    def __init__(self, layers=(3, 3, 3), channels=(16, 32, 64), num_classes: int = 10, in_chans: int = 3,
                 shortcut: str = "A", global_pool: str = "avg", drop_rate: float = 0.0,
                 zero_init_last: bool = False):
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero padding) or 'B' (1x1 projection), got {shortcut!r}")
        if len(layers) != len(channels):
            raise ValueError("layers and channels must have one entry per stage")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=channels[0], reduction=1, module="act1")]
        in_chs, reduction = channels[0], 1
        for i, (n, out_chs) in enumerate(zip(layers, channels)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = [BasicBlock(in_chs if j == 0 else out_chs, out_chs, stride if j == 0 else 1, shortcut)
                      for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"layer{i + 1}"))
            in_chs = out_chs
        self.num_stages = len(layers)
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights(zero_init_last)

    def init_weights(self, zero_init_last: bool = False) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    m.zero_init_last()

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for stage in self.stages():
            if self.grad_checkpointing and not torch.jit.is_scripting():
                from timm.models import checkpoint_seq
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    return build_model_with_cfg(CifarResNet, variant, pretrained,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3)), **kwargs)


# -- MobileNetV2 for CIFAR ----------------------------------------------------------------------
# timm's EfficientNet always gives its stem stride 2, so of ImageNet MobileNetV2's four stride-2
# stages only two keep it (c32 and c160): 32x32 -> 16 (stem, c16, c24) -> 8 (c32, c64, c96)
# -> 4 (c160, c320), total stride 8 -- the resolution schedule of the usual CIFAR MobileNetV2
# (stem stride 1, strides 1,1,2,2,1,2,1) at half the resolution.
MOBILENETV2_CIFAR_ARCH = [
    ["ds_r1_k3_s1_c16"],
    ["ir_r2_k3_s1_e6_c24"],
    ["ir_r3_k3_s2_e6_c32"],
    ["ir_r4_k3_s1_e6_c64"],
    ["ir_r3_k3_s1_e6_c96"],
    ["ir_r3_k3_s2_e6_c160"],
    ["ir_r1_k3_s1_e6_c320"],
]


def _gen_mobilenet_v2_cifar(variant: str, channel_multiplier: float = 1.0, pretrained: bool = False,
                            **kwargs) -> EfficientNet:
    """timm's ``_gen_mobilenet_v2`` (ReLU6, head 1280 or wider) with MOBILENETV2_CIFAR_ARCH."""
    round_chs_fn = partial(round_channels, multiplier=channel_multiplier)
    if kwargs.get("features_only"):
        kwargs.setdefault("out_indices", (0, 1, 2))  # stage ends at reduction 2, 4, 8 (timm's default: 5)
    model_kwargs = dict(
        block_args=decode_arch_def(MOBILENETV2_CIFAR_ARCH),
        num_features=max(1280, round_chs_fn(1280)),
        stem_size=32,
        round_chs_fn=round_chs_fn,
        norm_layer=kwargs.pop("norm_layer", None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, "relu6"),
        **kwargs,
    )
    return _create_effnet(variant, pretrained, **model_kwargs)


# -- registration -------------------------------------------------------------------------------
def _cfg(**kwargs) -> dict:
    return {**dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=(4, 4), crop_pct=1.0,
                   interpolation="bilinear", mean=CIFAR10_MEAN, std=CIFAR10_STD, license="apache-2.0"),
            **kwargs}


# read by timm.models.register_model: the name of each entrypoint below keys its pretrained cfg
default_cfgs = generate_default_cfgs({
    "resnet20": _cfg(pool_size=(8, 8), first_conv="conv1", classifier="fc",
                     paper_name="Deep Residual Learning for Image Recognition", paper_ids="arXiv:1512.03385"),
    "mobilenetv2_050_cifar": _cfg(first_conv="conv_stem", classifier="classifier", paper_ids="arXiv:1801.04381"),
    "mobilenetv2_100_cifar": _cfg(first_conv="conv_stem", classifier="classifier", paper_ids="arXiv:1801.04381"),
})


@register_model
def resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (He et al. 2016, sec. 4.2), option-A shortcuts; ``shortcut='B'`` for 1x1 projections."""
    return _create_cifar_resnet("resnet20", pretrained, layers=(3, 3, 3), **kwargs)


@register_model
def mobilenetv2_050_cifar(pretrained: bool = False, **kwargs) -> EfficientNet:
    """MobileNetV2 width 0.5 for 32x32 input (total stride 8)."""
    return _gen_mobilenet_v2_cifar("mobilenetv2_050_cifar", 0.5, pretrained=pretrained, **kwargs)


@register_model
def mobilenetv2_100_cifar(pretrained: bool = False, **kwargs) -> EfficientNet:
    """MobileNetV2 width 1.0 for 32x32 input (total stride 8)."""
    return _gen_mobilenet_v2_cifar("mobilenetv2_100_cifar", 1.0, pretrained=pretrained, **kwargs)
