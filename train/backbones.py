"""Backbones: a tiny CNN for CPU runs and tests, torchvision ResNet-18/50 with a small-image stem.

Every backbone maps images [B, 3, H, W] to features [B, F] (`feat_dim` = F), with no classifier.
The small-image stem (CIFAR-style, solo-learn): a 3x3 stride-1 first convolution and no max-pool.
"""
from __future__ import annotations

from torch import nn

BACKBONES = ("tiny", "resnet18", "resnet50")


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU stages (width w, 2w, 4w; stride 2, 2, 1) and global average pooling.

    Sized for the CPU: at 28 px and w = 32 a forward + backward of 512 images takes ~0.15 s on 2
    cores (stride 1 first would take ~1.4 s).
    """

    def __init__(self, width: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for i, stride in enumerate((2, 2, 1)):
            c_out = width * 2**i
            layers += [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.feat_dim = c_in

    def forward(self, x):
        return self.body(x).mean(dim=(2, 3))


def _resnet(name: str, small_stem: bool) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if small_stem:
        # solo-learn's CIFAR stem (the paper's runs): 3x3, stride 1, padding 2, no max-pool
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
        net.maxpool = nn.Identity()
    net.feat_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net


def build_backbone(name: str, image_size: int, small_stem: str = "auto", tiny_width: int = 32) -> nn.Module:
    """The backbone `name` (one of BACKBONES); `small_stem` "auto" = yes for images <= 64 px."""
    if name == "tiny":
        return TinyCNN(tiny_width)
    if name in ("resnet18", "resnet50"):
        use_small = image_size <= 64 if small_stem == "auto" else small_stem == "yes"
        return _resnet(name, use_small)
    raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
