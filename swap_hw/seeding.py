"""Seeds: one root seed per run, a derived seed for every random draw.

`derive_seed(root, "calibration", replicate)` hashes its keys, so two draws that differ in any key
get independent streams and the same keys always give the same stream, whatever order cells run in
or which process runs them. aihwkit draws from torch's global RNG, so code that calls it wraps the
call in `torch_global_seed(seed)`, which also restores the previous global state afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Iterator

import numpy as np
import torch


def derive_seed(root: int, *keys: object) -> int:
    """A 63-bit seed determined by `root` and `keys` (strings, ints, floats), stable across runs."""
    text = repr((int(root),) + tuple(keys)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def torch_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed`; pass it to every torch random call that accepts one,
    with device="cpu" (inside a GPU's device scope a call naming no device would ask this generator
    for a CUDA tensor and fail), and move the draw to where it is used: a draw is then the same
    numbers on any device (docs/gpu.md lists these draws)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed) % (2**63))
    return gen


def numpy_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(int(seed))


@contextlib.contextmanager
def torch_global_seed(seed: int) -> Iterator[None]:
    """Seed torch's (and Python's, numpy's) global RNGs for a block, then restore them.

    For libraries that draw from the global RNG without taking a generator (aihwkit's programming
    and read noise, torchattacks' random starts).
    """
    torch_state = torch.random.get_rng_state()
    # torch.manual_seed seeds every CUDA device's generator too (aihwkit's tiles on a GPU draw from
    # those), so theirs are restored as well once CUDA is in use; untouched on a CPU-only run
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch.manual_seed(int(seed) % (2**63))
    random.seed(int(seed))
    np.random.seed(int(seed) % (2**32))
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(py_state)
        np.random.set_state(np_state)
