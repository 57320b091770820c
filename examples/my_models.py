"""A user's own model, as a user would write it: a small residual CNN with BatchNorm.

Nothing here knows swap_hw. `custom_model.py` hands an instance to the Python API;
`custom_model.yaml` names the class as the scenario's `model.factory`.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """conv → BN → ReLU → conv → BN, plus the input (a residual connection)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResidualCNN(nn.Module):
    """stem conv → residual block → depthwise conv → global average pool → linear classifier."""

    def __init__(self, channels: int = 8, n_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.block = Block(channels)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.head = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.depthwise(self.block(self.stem(x))))
        return self.head(h.mean(dim=(2, 3)))
