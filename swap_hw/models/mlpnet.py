"""`mlpnet`: the SWAP / CBS papers' first benchmark network, input → 40 → 20 → classes, ReLU."""

from __future__ import annotations

import torch
from torch import nn


class MLPNet(nn.Module):
    """Fully connected ReLU network; `hidden=(40, 20)` is the SWAP/CBS paper's MLPNet (the authors'
    code builds it without biases: `bias=False`)."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, hidden: tuple[int, ...] = (40, 20),
                 bias: bool = True):
        super().__init__()
        in_features = 1
        for s in input_shape:
            in_features *= int(s)
        dims = [in_features, *hidden, n_classes]
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
