"""Architectures of the bundled Fashion-MNIST models (input (N, 1, 28, 28), 10 logits).

Widths are chosen so that each trains in well under an hour on 2 CPU cores.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU when ``act``)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FmnistCNN(nn.Module):
    """A small plain CNN: two conv+ReLU+maxpool stages and a two-layer classifier (~106k params)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FmnistVGG(nn.Module):
    """VGG-style: stages of (conv3x3 + BN + ReLU) x 2 and max-pooling, then an MLP classifier."""

    cfg = (24, 24, "M", 48, 48, "M", 96, 96, "M")

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(conv_bn_relu(cin, int(v)))
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * 3 * 3, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class FmnistResNet(nn.Module):
    """ResNet-style: a stem, three stages of basic blocks (28 -> 14 -> 7 px), global pooling, a linear head."""

    widths = (16, 32, 64)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        w1, w2, w3 = self.widths
        self.conv1 = nn.Conv2d(1, w1, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(w1, w1)
        self.layer2 = BasicBlock(w1, w2, stride=2)
        self.layer3 = BasicBlock(w2, w3, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            conv_bn_relu(cin, hidden, kernel=1),
            conv_bn_relu(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            conv_bn_relu(hidden, cout, kernel=1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class FmnistMobileNet(nn.Module):
    """MobileNetV2-style: depthwise-separable inverted residuals, global pooling, a linear head."""

    # (out channels, stride, expansion)
    cfg = ((16, 1, 1), (24, 2, 3), (24, 1, 3), (40, 2, 3), (40, 1, 3))

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(1, 16)]
        cin = 16
        for cout, stride, expand in self.cfg:
            layers.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        layers.append(conv_bn_relu(cin, 256, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "fmnist-cnn": FmnistCNN,
    "fmnist-vgg": FmnistVGG,
    "fmnist-resnet": FmnistResNet,
    "fmnist-mobilenet": FmnistMobileNet,
}
