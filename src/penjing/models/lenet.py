"""LeNet-300-100 and a LeNet-5-style conv net (the Deep Compression paper's MNIST models)."""

from __future__ import annotations

from torch import nn


class LeNet300(nn.Module):
    """LeNet-300-100: a 3-layer MLP, ``in_features -> 300 -> 100 -> classes``."""

    def __init__(self, in_features: int = 64, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.act = nn.ReLU()

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class LeNet5(nn.Module):
    """LeNet-5 style: two conv+pool stages (20 and 50 filters) then FC 500 and the classifier.

    With ``image_size=8`` (digits) the convs are 3x3 with padding 1 so that two 2x2 poolings
    leave a 2x2 map; with 28 (MNIST) they are the classic 5x5 without padding.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, num_classes: int = 10):
        super().__init__()
        k, pad = (3, 1) if image_size < 16 else (5, 0)
        side = image_size
        for _ in range(2):
            side = (side + 2 * pad - k + 1) // 2
        self.conv1 = nn.Conv2d(in_channels, 20, k, padding=pad)
        self.conv2 = nn.Conv2d(20, 50, k, padding=pad)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.fc2(self.act(self.fc1(x.flatten(1))))
