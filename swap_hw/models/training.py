"""Dense training (cached on disk by content), masked fine-tuning, applying a pruner's weights,
loading a user's checkpoint.

No dense model with NaN/Inf weights leaves here: training that diverges raises RunFault (and is
never cached), a cache file or a checkpoint holding them is refused naming the file, and so is an
empty, truncated or corrupt file (a torch zip archive's CRCs are checked before it is read).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import re
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import RunFault, SwapHwError
from ..seeding import torch_generator


def enforce_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every masked-out weight in place (masks: name → bool, True = survives)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    masks: Mapping[str, torch.Tensor] | None = None,
    optimizer: str = "adam",
    momentum: float = 0.0,
    after_step: Callable[[], None] | None = None,
) -> nn.Module:
    """Train in place on cross-entropy with Adam (default) or SGD (`optimizer="sgd"`, with
    `momentum`); with `masks`, pruned weights stay exactly zero.

    Masks are enforced after every optimiser step (Adam's moment estimates, or SGD's momentum,
    would otherwise revive a zeroed weight), so the model leaves this function with its sparsity intact.
    `after_step`, when given, is called after every optimiser step and before the masks are
    enforced (hardware-aware training clips the analog tiles' weights there; noise/hwa.py).
    """
    gen = torch_generator(seed)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if masks is not None:
        enforce_masks(model, masks)
    model.train()
    n = x.shape[0]
    for _ in range(int(epochs)):
        # the order is drawn on the CPU (the generator's device) and moved: the same on any device
        perm = torch.randperm(n, generator=gen, device="cpu").to(x.device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
            if masks is not None:
                enforce_masks(model, masks)
    model.eval()
    return model


def apply_weights(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` with the named parameters replaced (e.g. a PruneResult's weights)."""
    clone = copy.deepcopy(model)
    params = dict(clone.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.reshape(params[name].shape))
    clone.eval()
    return clone


def nonfinite_tensors(source: nn.Module | Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point parameters and buffers (or state_dict entries) holding NaN or Inf."""
    if isinstance(source, nn.Module):
        items = [*source.named_parameters(), *source.named_buffers()]
    else:
        items = list(source.items())
    return [name for name, t in items
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _names(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def torch_file_problem(path: Path) -> str | None:
    """Why `path` cannot be a complete torch.save file (empty; a zip archive that is truncated or
    fails its CRC check: torch itself reads damaged tensor bytes without a word), or None."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(b"\x80"):  # torch's legacy (non-zip) format, a pickle: checked only by reading it
        return None
    if head != b"PK\x03\x04":
        return "is not a torch.save file (neither a zip archive nor a pickle)"
    if not zipfile.is_zipfile(path):  # its directory (written last) is missing: the file was cut short
        return "is truncated or corrupt (an incomplete zip archive)"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"is truncated or corrupt ({_first_line(exc)})"
    if bad is not None:
        return f"is corrupt ({bad} fails its CRC check)"
    return None


def _load_cached(model: nn.Module, path: Path) -> nn.Module:
    """The cached dense model in `path`, refusing a damaged file or NaN/Inf weights (RunFault)."""
    fix = "delete it and run again to retrain"
    problem = torch_file_problem(path)
    if problem:
        raise RunFault(f"dense-model cache file {path} {problem}; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure to read our own file is a damaged file
        raise RunFault(f"dense-model cache file {path} could not be read ({_first_line(exc)}); {fix}") from None
    bad = nonfinite_tensors(model)
    if bad:
        raise RunFault(f"dense-model cache file {path} holds NaN/Inf weights ({_names(bad)}); {fix}")
    model.eval()
    return model


def _check_trained(model: nn.Module) -> None:
    bad = nonfinite_tensors(model)
    if bad:
        raise RunFault(f"the dense model has NaN/Inf weights after training ({_names(bad)}); it was not cached: "
                       "lower model.train.lr (or raise model.train.batch_size)")


def _write_cache(model: nn.Module, path: Path, description: dict) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
        tmp = None
        (path.with_suffix(".json")).write_text(json.dumps(description, indent=2, sort_keys=True, default=str))
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
        raise RunFault(f"cannot write the dense-model cache {path}: {why}; free some space or set "
                       "output.cache_dir to a writable folder") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def cache_key(description: dict) -> str:
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cached_dense_model(
    description: dict,
    build: Callable[[], nn.Module],
    train: Callable[[nn.Module], nn.Module],
    cache_dir: str | os.PathLike | None,
) -> tuple[nn.Module, bool]:
    """Load the dense model for `description` from the cache, or build + train + store it.

    Returns (model, was_cached). The file name is a hash of everything that determines the trained
    weights; it is written atomically so concurrent workers never read a half-written file.
    A model with NaN/Inf weights (after training, or in the cache file) raises RunFault and is
    never written.
    """
    model = build()
    if cache_dir is None:
        model = train(model)
        _check_trained(model)
        return model, False
    path = Path(cache_dir) / f"dense-{cache_key(description)}.pt"
    if path.is_file():
        return _load_cached(model, path), True
    train(model)
    _check_trained(model)
    _write_cache(model, path, description)
    return model, False


def read_checkpoint(path: str, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict in a checkpoint file: a state_dict, a {'state_dict': ...} / {'model': ...}
    bundle (e.g. `export`'s), or — only with `trusted` — a pickled model object (torch.save(model)),
    whose unpickling runs code from the file."""
    p = Path(path)
    if not p.is_file():
        raise SwapHwError(f"checkpoint not found: {path}")
    resave = "save it again with torch.save(model.state_dict(), path)"
    problem = torch_file_problem(p)
    if problem:
        raise SwapHwError(f"checkpoint {path} {problem}; {resave}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except (EOFError, struct.error, IndexError):  # a legacy-format file cut short
        raise SwapHwError(f"checkpoint {path} is truncated or corrupt (its data ends early); {resave}") from None
    except pickle.UnpicklingError as exc:
        if not trusted:
            names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
            held = f"a pickled {names[0]}" if names else "a pickled object"
            raise SwapHwError(f"checkpoint {path} holds {held}, not a plain state_dict; reading it runs code from "
                              "the file: set model.trusted: true if you trust it, or save model.state_dict() "
                              "instead") from None
        try:
            state = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001 - a trusted pickle that still cannot be read
            raise SwapHwError(f"checkpoint {path} could not be unpickled: {_first_line(exc2)}") from None
    except Exception as exc:  # noqa: BLE001 - any other failure is a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "EOF" in first or "corrupt" in first:
            raise SwapHwError(f"checkpoint {path} is truncated or corrupt ({first.split('. ')[0]}); {resave}") from None
        raise SwapHwError(f"checkpoint {path} could not be read as a torch file ({type(exc).__name__}: "
                          f"{first}); {resave}") from None
    if isinstance(state, nn.Module):
        state = state.state_dict()
    elif isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    elif isinstance(state, dict) and "model" in state and isinstance(state["model"], (dict, nn.Module)):
        state = state["model"] if isinstance(state["model"], dict) else state["model"].state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SwapHwError(f"checkpoint {path} holds no state_dict (name → tensor)")
    bad = nonfinite_tensors(state)
    if bad:
        raise SwapHwError(f"checkpoint {path} holds NaN/Inf weights ({_names(bad)}); give a checkpoint of a "
                          "model that trained without diverging")
    return state


def load_checkpoint(model: nn.Module, path: str, trusted: bool = False) -> nn.Module:
    """Load a user's checkpoint (see `read_checkpoint`) into `model`, which must fit it exactly."""
    state = read_checkpoint(path, trusted)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
                 for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if names]
        raise SwapHwError(f"checkpoint {path} does not fit the configured model ({'; '.join(parts)})")
    model.load_state_dict(state)
    model.eval()
    return model
