"""Adversarial inputs from torchattacks — the only module that imports torchattacks.

An attack maps clean inputs x ∈ [0, 1]^(C×H×W) with true labels y to inputs x' inside a budget
around x, chosen to raise the model's cross-entropy loss (untargeted):

    x' ≈ argmax_{‖x' − x‖ ≤ eps, 0 ≤ x' ≤ 1}  CE(f(x'), y)

with ‖·‖ the L∞ norm for every attack here except `pgdl2` (L2 norm over all input coordinates).
`eps` is in input units: swap_hw.data scales every dataset to [0, 1], so eps = 0.1 means "each
pixel moves by at most 0.1 of its full range" whatever the dataset. eps = 0 returns x unchanged.

Attacks offered (torchattacks 3.3.0 classes):

| name    | torchattacks | what it does                                                         |
|---------|--------------|----------------------------------------------------------------------|
| fgsm    | FGSM         | one step x + eps·sign(∇x CE)                                         |
| ffgsm   | FFGSM        | FGSM from a uniform random start in the eps-ball (step alpha)        |
| bim     | BIM          | `steps` signed-gradient steps of size alpha, projected, no random start |
| pgd     | PGD          | BIM from a uniform random start (if random_start)                    |
| pgdl2   | PGDL2        | PGD in the L2 ball: normalised-gradient steps, L2 projection         |
| mifgsm  | MIFGSM       | BIM with gradient momentum (decay 1.0)                               |
| eotpgd  | EOTPGD       | PGD averaging `eot_iter` gradients per step — for stochastic forwards (analog hardware) |
| apgd    | APGD         | auto-PGD (Croce & Hein 2020), step size adapted, CE loss, L∞          |
| square  | Square       | score-based black-box random search, L∞; `steps` = query budget      |

The step size is alpha = alpha_rel·eps; by default 1.25·eps for ffgsm and 2.5·eps/steps for the
iterative attacks (equal to torchattacks' own 2/255 for eps 8/255 at 10 steps).

Randomness: torchattacks draws from torch's global RNG (random starts, Square's search) and APGD /
Square reseed it themselves, so every call here runs inside `torch_global_seed(seed)`: the same
seed gives the same x', and the caller's global RNG state is restored afterwards.

The model is not modified: attacks take gradients with respect to the inputs only
(torch.autograd.grad on x), and the model's train/eval mode is restored after the call. Attacks
run the model in eval mode.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..registry import Params
from ..seeding import derive_seed, torch_global_seed

AttackName = Literal["fgsm", "ffgsm", "bim", "pgd", "pgdl2", "mifgsm", "eotpgd", "apgd", "square"]

ATTACK_NAMES: tuple[str, ...] = AttackName.__args__  # type: ignore[attr-defined]


class AttackSettings(Params):
    """How an attack searches, apart from its budget eps (shared by the adversarial members)."""

    attack: AttackName = Field(
        "pgd",
        description="torchattacks attack: fgsm, ffgsm, bim, pgd, pgdl2 (L2 ball), mifgsm, eotpgd, "
        "apgd, square (black-box). See swap_hw/attacks.py for what each does.",
    )
    steps: int = Field(
        10,
        ge=1,
        le=10_000,
        description="iterations of the iterative attacks (bim, pgd, pgdl2, mifgsm, eotpgd, apgd); "
        "the query budget for square; ignored by fgsm and ffgsm",
    )
    alpha_rel: float | None = Field(
        None,
        gt=0.0,
        le=2.0,
        description="step size per iteration as a fraction of eps (alpha = alpha_rel·eps); "
        "None = 1.25 for ffgsm (Wong et al. 2020) and 2.5/steps for bim, pgd, pgdl2, mifgsm, "
        "eotpgd (Madry et al. 2018: the steps together can cross the ball 2.5 times)",
    )
    random_start: bool = Field(
        True,
        description="start pgd / pgdl2 / eotpgd from a uniform random point in the eps-ball",
    )
    eot_iter: int = Field(
        1,
        ge=1,
        le=100,
        description="gradients averaged per step (expectation over transformation) by eotpgd and "
        "apgd; raise it when the forward is stochastic (noisy analog hardware)",
    )


def step_size(settings: AttackSettings, eps: float) -> float:
    """alpha, the per-step move in input units, for budget eps (see AttackSettings.alpha_rel)."""
    if settings.alpha_rel is not None:
        return settings.alpha_rel * eps
    if settings.attack == "ffgsm":
        return 1.25 * eps
    return 2.5 * eps / settings.steps


def build_attack(model: nn.Module, settings: AttackSettings, eps: float, seed: int):
    """A torchattacks attack object on `model` with budget `eps` (input units, ≥ 0)."""
    import torchattacks

    alpha = step_size(settings, eps)
    name = settings.attack
    # APGD and Square reseed torch's global RNG from their own `seed` argument; give them one
    # derived from ours so different seeds give different searches. 31 bits: they pass it to
    # torch.manual_seed, which accepts any int, but keep it in the portable range.
    inner_seed = derive_seed(seed, "torchattacks-inner") % (2**31)
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=eps)
    if name == "ffgsm":
        return torchattacks.FFGSM(model, eps=eps, alpha=alpha)
    if name == "bim":
        return torchattacks.BIM(model, eps=eps, alpha=alpha, steps=settings.steps)
    if name == "pgd":
        return torchattacks.PGD(
            model, eps=eps, alpha=alpha, steps=settings.steps, random_start=settings.random_start
        )
    if name == "pgdl2":
        return torchattacks.PGDL2(
            model, eps=eps, alpha=alpha, steps=settings.steps, random_start=settings.random_start
        )
    if name == "mifgsm":
        return torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=settings.steps)
    if name == "eotpgd":
        return torchattacks.EOTPGD(
            model,
            eps=eps,
            alpha=alpha,
            steps=settings.steps,
            eot_iter=settings.eot_iter,
            random_start=settings.random_start,
        )
    if name == "apgd":
        return torchattacks.APGD(
            model, norm="Linf", eps=eps, steps=settings.steps, eot_iter=settings.eot_iter,
            seed=inner_seed, loss="ce",
        )
    if name == "square":
        return torchattacks.Square(
            model, norm="Linf", eps=eps, n_queries=settings.steps, seed=inner_seed
        )
    raise AssertionError(f"unhandled attack {name!r}")  # the Literal makes this unreachable


def craft_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: AttackSettings,
    eps: float,
    seed: int,
    batch_size: int = 512,
) -> torch.Tensor:
    """Adversarial versions x' of inputs x (float, in [0, 1]) against `model`, budget `eps`.

    Returns a new tensor of x's shape and dtype with x' ∈ [0, 1] and ‖x' − x‖ ≤ eps per example
    (L∞, or L2 for pgdl2). Processed in batches of `batch_size` examples, each batch under its own
    seed derived from (seed, batch index), so the result does not depend on the global RNG.
    Inputs with fewer than 4 dimensions are viewed as (N, 1, 1, F) for the attack (some
    torchattacks attacks normalise over dims 1–3) and returned in their own shape.
    """
    if eps < 0:
        raise ValueError(f"eps must be ≥ 0, got {eps}")
    if eps == 0 or x.shape[0] == 0:
        return x.clone()
    shape = x.shape
    x4 = x.reshape(shape[0], 1, 1, -1) if x.dim() < 4 else x
    target = _InputShaped(model, shape[1:]) if x.dim() < 4 else model
    out = torch.empty_like(x4)
    for b, start in enumerate(range(0, x4.shape[0], batch_size)):
        stop = min(start + batch_size, x4.shape[0])
        with torch_global_seed(derive_seed(seed, "attack-batch", b)):
            attack = build_attack(target, settings, eps, derive_seed(seed, "attack-batch", b))
            out[start:stop] = attack(x4[start:stop].detach(), y[start:stop].detach()).detach()
    return out.reshape(shape)


class _InputShaped(nn.Module):
    """Presents a model taking inputs of `shape` to an attack that hands it (N, 1, 1, F)."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.model = model
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(x.shape[0], *self.shape))


def input_range_problem(data_config, inline=None) -> str | None:
    """Why the scenario's data cannot be attacked, or None (a config-time check, cheap).

    `inline`: in-memory data (a DataSplits handed to a Python Study), checked instead of the file.

    Attacks clip x' to [0, 1] and eps is in those units. swap_hw.data scales digits and the
    torchvision datasets to [0, 1] and divides uint8 npz inputs by 255, but passes float npz
    inputs through as they are; such inputs outside [0, 1] would be silently clipped by every
    attack. `data_config` is the scenario's DataConfig; a missing npz file is left to the data
    loader to report.
    """
    if inline is not None:
        for key in ("x_train", "x_test"):
            x = getattr(inline, key)
            lo, hi = float(x.min()), float(x.max())
            if lo < 0.0 or hi > 1.0:
                return (f"attacks keep inputs in [0, 1] (eps is in those units), but the {key.split('_')[1]} "
                        f"inputs span [{lo:g}, {hi:g}]: rescale them to [0, 1]")
        return None
    if getattr(data_config, "name", None) != "npz" or not data_config.path:
        return None
    import numpy as np
    from pathlib import Path

    path = Path(data_config.path)
    if not path.is_file():
        return None
    try:
        archive = np.load(path)
    except Exception:  # noqa: BLE001 - not a readable npz: the data loader says so, naming data.path
        return None
    with archive:
        for key in ("x_train", "x_test"):
            if key not in archive:
                continue
            x = archive[key]
            if x.dtype == np.uint8 or x.size == 0:
                continue
            lo, hi = float(np.min(x)), float(np.max(x))
            if lo < 0.0 or hi > 1.0 or not (np.isfinite(lo) and np.isfinite(hi)):
                return (
                    f"attacks keep inputs in [0, 1] (eps is in those units), but {key} of "
                    f"data.path {str(path)!r} spans [{lo:g}, {hi:g}]: rescale the inputs to "
                    "[0, 1] or store them as uint8"
                )
    return None


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ‖x' − x‖_∞ and ‖x' − x‖_2 (input units), each of length N."""
    delta = (x_adv - x).reshape(x.shape[0], -1)
    return delta.abs().amax(dim=1), delta.norm(dim=1)
