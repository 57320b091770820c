"""Where a cell is computed: the scenario's `device` (auto, cpu, cuda, cuda:N) as a torch.device.

The device decides where the cells' tensors live, never what the cells are: it stays out of the
cell keys and the run id (a cell computed on a GPU answers the same question as on the CPU; its
last bits may differ, see docs/gpu.md). The requested and the resolved device are recorded with
the run instead (`describe_device`).

`auto` is resolved where the work runs (in each pool or Dask worker), so a coordinator without
a GPU can hand cells to GPU workers; `cuda` / `cuda:N` are checked against this process's torch
when the scenario is validated, so a typo or a CPU-only torch build is refused before any training.

Work on a device runs inside `device_scope(device)`: `with torch.device(device)` makes the factory
functions (torch.zeros, torch.empty, ...) that name no device create their tensors there. On the
CPU the scope is not entered: the CPU is already the default device, and the scope's Python hook
on every torch call would only cost time.
"""

from __future__ import annotations

import contextlib
import platform
import re
from typing import Any, Iterator

import torch

from .errors import ParameterError

AUTO = "auto"
ALLOWED = "auto, cpu, cuda, cuda:N (N < device count)"

_FORM = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def _cuda_count() -> int:
    """CUDA devices this torch build sees (0 on a CPU-only build or a machine without a GPU)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(text: Any) -> str:
    """`text` if it names a device this process can compute on (or `auto`); otherwise a
    ParameterError whose one line says what was asked, why it cannot be had, and what is allowed."""
    if not isinstance(text, str):
        raise ParameterError(f"expected a device name, got {text!r}; allowed: {ALLOWED}")
    match = _FORM.match(text.strip())
    if match is None or (match.group(1) != "cuda" and match.group(2) is not None):
        raise ParameterError(f"unknown device {text!r}; allowed: {ALLOWED}")
    kind, index = match.group(1), match.group(2)
    if kind == "cuda":
        count = _cuda_count()
        if count == 0:
            raise ParameterError(f"{text!r} requested, but this torch build sees no CUDA device; allowed: {ALLOWED}")
        if index is not None and int(index) >= count:
            raise ParameterError(f"{text!r} requested, but this torch build sees {count} CUDA device(s) "
                                 f"(cuda:0 … cuda:{count - 1}); allowed: {ALLOWED}")
    return text.strip()


def resolve_device(text: str = AUTO) -> torch.device:
    """The torch.device `text` names; `auto` is the first CUDA device when torch sees one, else the CPU."""
    text = check_device(text)
    if text == AUTO:
        return torch.device("cuda" if _cuda_count() else "cpu")
    device = torch.device(text)
    if device.type == "cuda" and device.index is None:
        # one fixed index, so that what is recorded and what is computed on are the same device
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def describe_device(device: torch.device, requested: str | None = None) -> dict[str, Any]:
    """What the run record says of a device: type, index, name (the GPU's, or the CPU's), torch."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    out = {"type": device.type, "index": device.index, "name": name, "torch": torch.__version__}
    if requested is not None:
        out = {"requested": requested, **out}
    return out


@contextlib.contextmanager
def device_scope(device: torch.device) -> Iterator[None]:
    """Run the block with `device` as the default device of torch's factory functions (see the
    module docstring: not entered for the CPU, which is the default already)."""
    if device.type == "cpu":
        yield
        return
    with device:
        yield


def free_memory_mb(device: torch.device) -> float | None:
    """Free memory of a CUDA device in MiB (what the driver reports now); None for the CPU."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free / 2**20
