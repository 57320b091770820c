"""Content digests of named tensors: the same weights give the same digest in any process.

The runner records the digest of every pruned weight set in the cell's prune log; `export`
recomputes the weights and checks them against it, and the executors check that every worker
loaded the same dense model as the coordinator.
"""

from __future__ import annotations

import hashlib
import os
from typing import Mapping

import torch


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 (first 16 hex digits) over names, dtypes, shapes and raw bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of a file's bytes: a user file is known by its content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
