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
| autoattack_rand | APGD + APGD in a MultiAttack | AutoAttack's `rand` version (below), L∞ |

autoattack_rand is AutoAttack's version for randomized defences (Croce & Hein 2020, the version
RobustBench requires for a stochastic model): APGD with the cross-entropy loss, then APGD with the
DLR loss on the examples the first did not fool, both L∞, one restart, each gradient averaged over
`eot_iter` forward/backward passes (EOT). torchattacks 3.3.0's `AutoAttack(version='rand')` takes
neither the EOT count nor the step count (signature: model, norm, eps, version, n_classes, seed,
verbose) and fixes them at eot_iter = 20, steps = 10; it is built here from the same public parts
(`MultiAttack([APGD(loss='ce'), APGD(loss='dlr')])`, one shared seed) so that both can be set, and
with `eot_iter=20, steps=10` it gives x' bit for bit equal to `AutoAttack(version='rand')`
(tests/test_eot.py). The DLR loss −(z_y − max_{j≠y} z_j)/(z_(1) − z_(3)) reads the three largest
logits, so autoattack_rand needs ≥ 3 classes (refused otherwise, at config time where the data say
how many; before attacking, one forward pass of one example, under its own seed, counts the
model's outputs). Like every APGD, it returns the clean x for an example it did not fool. Cost per example:
at most 2·(steps + 1)·eot_iter + 4 forward passes and 2·(steps + 1)·eot_iter backward passes
(AutoAttack's own setting, steps 10 × EOT 20: ≈ 440 of each; the original auto-attack package uses
100 steps: ≈ 4040).

Attacking a stochastic model by the randomized-defence rules (EOT over model draws)
------------------------------------------------------------------------------------
`craft_adversarial(model, ...)` takes gradients through ONE model: for a chip on simulated analog
hardware, one programming draw. RobustBench / AutoAttack accept a robustness number for a
randomized model only when the attack's gradients are an expectation over the randomness (EOT) and
the accuracy is scored on fresh draws. `craft_adversarial_eot(models, ...)` attacks K = len(models)
independent draws at once: `DrawCycle` presents them as one module whose n-th forward call runs
draw n mod K, so any K consecutive calls — in particular the `eot_iter = K` gradient passes of each
EOTPGD / APGD step — see the K draws once each and average their gradients (torchattacks' EOTPGD
semantics: the mean of per-draw loss gradients, not the gradient of averaged logits). With K = 1
the cycle is the model itself, so eotpgd with K = 1 gives x' bit for bit equal to pgd on that one
draw (same seed). Which draws are attacked and which are scored is the caller's choice: the
`adversarial` deployment condition attacks K draws held out from the one it scores on.

The step size is alpha = alpha_rel·eps; by default 1.25·eps for ffgsm and 2.5·eps/steps for the
iterative attacks (equal to torchattacks' own 2/255 for eps 8/255 at 10 steps).

Randomness: torchattacks draws from torch's global RNG (random starts, Square's search) and APGD /
Square reseed it themselves, so every call here runs inside `torch_global_seed(seed)`: the same
seed gives the same x', and the caller's global RNG state is restored afterwards.

The model is not modified: attacks take gradients with respect to the inputs only
(torch.autograd.grad on x), and the train/eval flag of every submodule is restored after the
call. Attacks run the model in eval mode.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from pydantic import Field
from torch import nn

from ..errors import ParameterError
from ..registry import Params
from ..seeding import derive_seed, torch_global_seed

AttackName = Literal[
    "fgsm", "ffgsm", "bim", "pgd", "pgdl2", "mifgsm", "eotpgd", "apgd", "square", "autoattack_rand"
]

# Attacks whose every gradient is a mean over `eot_iter` forward/backward passes: the ones that can
# average over several draws of a stochastic model (EOT).
EOT_ATTACKS: tuple[str, ...] = ("eotpgd", "apgd", "autoattack_rand")

# autoattack_rand's second attack, APGD-DLR, normalises by the gap between the largest and the
# third-largest logit.
AUTOATTACK_MIN_CLASSES = 3

ATTACK_NAMES: tuple[str, ...] = AttackName.__args__  # type: ignore[attr-defined]


class AttackSettings(Params):
    """How an attack searches, apart from its budget eps (shared by the adversarial members)."""

    attack: AttackName = Field(
        "pgd",
        description="torchattacks attack: fgsm, ffgsm, bim, pgd, pgdl2 (L2 ball), mifgsm, eotpgd, "
        "apgd, square (black-box), autoattack_rand (AutoAttack's version for randomized models: "
        "APGD-CE then APGD-DLR with EOT, L∞, ≥ 3 classes). See swap_hw/noise/attacks.py for what "
        "each does.",
    )
    steps: int = Field(
        10,
        ge=1,
        le=10_000,
        description="iterations of the iterative attacks (bim, pgd, pgdl2, mifgsm, eotpgd, apgd; "
        "each of autoattack_rand's two APGDs); the query budget for square; ignored by fgsm and ffgsm",
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
        description="gradients averaged per step (expectation over transformation) by eotpgd, "
        "apgd and autoattack_rand (AutoAttack's own rand setting is 20); raise it when the forward "
        "is stochastic (noisy analog hardware)",
    )


def step_size(settings: AttackSettings, eps: float) -> float:
    """alpha, the per-step move in input units, for budget eps (see AttackSettings.alpha_rel)."""
    if settings.alpha_rel is not None:
        return settings.alpha_rel * eps
    if settings.attack == "ffgsm":
        return 1.25 * eps
    return 2.5 * eps / settings.steps


def torchattacks_seed(seed: int) -> int:
    """The `seed` argument handed to the torchattacks attacks that reseed torch's global RNG
    themselves (APGD, Square, autoattack_rand's APGDs), derived from `seed` so that different
    seeds give different searches; in [0, 2^31) (they pass it to torch.manual_seed, which takes
    any int, but keep it in the portable range)."""
    return derive_seed(seed, "torchattacks-inner") % (2**31)


def build_attack(model: nn.Module, settings: AttackSettings, eps: float, seed: int):
    """A torchattacks attack object on `model` with budget `eps` (input units, ≥ 0)."""
    import torchattacks

    alpha = step_size(settings, eps)
    name = settings.attack
    inner_seed = torchattacks_seed(seed)
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
    if name == "autoattack_rand":
        # torchattacks.AutoAttack(version='rand')'s two attacks with the same shared seed and one
        # restart, built here so that steps and eot_iter can be set (its constructor fixes 10, 20).
        common = dict(norm="Linf", eps=eps, steps=settings.steps, n_restarts=1, seed=inner_seed,
                      eot_iter=settings.eot_iter)
        return torchattacks.MultiAttack([
            torchattacks.APGD(model, loss="ce", **common),
            torchattacks.APGD(model, loss="dlr", **common),
        ])
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
    Gradients come from this one model; for a stochastic model use `craft_adversarial_eot`.
    """
    return _craft(model, [model], x, y, settings, eps, seed, batch_size)


def craft_adversarial_eot(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    settings: AttackSettings,
    eps: float,
    seed: int,
    batch_size: int = 512,
) -> torch.Tensor:
    """Adversarial x' against K = len(models) draws of a stochastic model at once (EOT).

    The attack runs on `DrawCycle(models)`: forward call n uses draw n mod K, restarting at draw 0
    for every batch, so each EOTPGD / APGD / autoattack_rand step with `settings.eot_iter` = K
    averages one loss gradient per draw. Attacks without an EOT loop (pgd, fgsm, ...) take a
    different draw at every call; the caller should use them only with K = 1, where the cycle is
    the one model and x' equals `craft_adversarial(models[0], ...)` bit for bit (same seed).
    Same contract as `craft_adversarial` (x' ∈ [0, 1], within eps, seeded per batch); every model's
    train/eval mode is restored afterwards.
    """
    models = list(models)
    if not models:
        raise ParameterError("craft_adversarial_eot needs at least one model draw, got none")
    cycle = models[0] if len(models) == 1 else DrawCycle(models)
    return _craft(cycle, models, x, y, settings, eps, seed, batch_size)


def _craft(
    target: nn.Module,
    members: list[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    settings: AttackSettings,
    eps: float,
    seed: int,
    batch_size: int,
) -> torch.Tensor:
    """The batching shared by craft_adversarial and craft_adversarial_eot (see those)."""
    if eps < 0:
        raise ValueError(f"eps must be ≥ 0, got {eps}")
    if eps == 0 or x.shape[0] == 0:
        return x.clone()
    shape = x.shape
    x4 = x.reshape(shape[0], 1, 1, -1) if x.dim() < 4 else x
    if settings.attack == "autoattack_rand":
        _check_class_count(members[0], x[:1], seed)
    # torchattacks runs the model in eval mode and afterwards calls `train()` on it if it found it
    # in train mode, which spreads that flag over submodules that had their own (an analog chip
    # in eval mode inside a wrapper in train mode). The `finally` puts back every submodule's own
    # flag instead. A DrawCycle is put in eval mode for the attack.
    modes = [(m, m.training) for member in members for m in member.modules()]
    if isinstance(target, DrawCycle):
        target.eval()
    target = _InputShaped(target, shape[1:]) if x.dim() < 4 else target
    out = torch.empty_like(x4)
    try:
        for b, start in enumerate(range(0, x4.shape[0], batch_size)):
            stop = min(start + batch_size, x4.shape[0])
            if isinstance(target, (DrawCycle, _InputShaped)):
                _restart_cycle(target)
            with torch_global_seed(derive_seed(seed, "attack-batch", b)):
                attack = build_attack(target, settings, eps, derive_seed(seed, "attack-batch", b))
                out[start:stop] = attack(x4[start:stop].detach(), y[start:stop].detach()).detach()
    finally:
        for m, mode in modes:
            m.training = mode
    return out.reshape(shape)


class DrawCycle(nn.Module):
    """K draws of a stochastic model presented as one module: forward call n runs draw n mod K.

    Any K consecutive calls therefore run each draw exactly once, so an attack averaging
    `eot_iter` = K gradients per step (EOTPGD, APGD) averages over the K draws. `served` lists the
    index of the draw each call ran (for checks); `restart()` sends the next call to draw 0.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.draws = nn.ModuleList(models)
        self.served: list[int] = []
        self._next = 0

    def restart(self) -> None:
        self._next = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self._next
        self._next = (k + 1) % len(self.draws)
        self.served.append(k)
        return self.draws[k](x)


def _restart_cycle(module: nn.Module) -> None:
    inner = module.model if isinstance(module, _InputShaped) else module
    if isinstance(inner, DrawCycle):
        inner.restart()


def _check_class_count(model: nn.Module, x1: torch.Tensor, seed: int) -> None:
    """Raise a one-line ParameterError when `model` has fewer outputs than autoattack_rand needs.

    One forward pass of one example, in eval mode, under its own derived seed (so a stochastic
    model's draws for the attack itself are not shifted); the caller restores the model's mode.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch_global_seed(derive_seed(seed, "class-count")):
            width = int(model(x1).shape[-1])
    finally:
        model.train(was_training)
    if width < AUTOATTACK_MIN_CLASSES:
        raise ParameterError(autoattack_class_problem(width))


def autoattack_class_problem(n_classes: int) -> str:
    """Why autoattack_rand cannot attack an n_classes-way classifier (one line)."""
    return (f"autoattack_rand runs APGD-DLR, whose loss compares the three largest logits: it needs "
            f"≥ {AUTOATTACK_MIN_CLASSES} classes, but the model has {n_classes}; use attack: apgd or "
            "eotpgd (cross-entropy, with EOT) instead")


class _InputShaped(nn.Module):
    """Presents a model taking inputs of `shape` to an attack that hands it (N, 1, 1, F)."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.model = model
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(x.shape[0], *self.shape))


def class_count(data_config, inline=None) -> int | None:
    """Number of classes of the scenario's data (config time, cheap), or None when unknown.

    10 for digits, mnist, fashion_mnist and cifar10; for npz, 1 + the largest label of y_train
    (as swap_hw.data counts them); for in-memory data (`inline`, a DataSplits) its n_classes.
    None when an npz file is missing or unreadable (the data loader reports that).
    """
    if inline is not None:
        return int(inline.n_classes)
    name = getattr(data_config, "name", None)
    if name in ("digits", "mnist", "fashion_mnist", "cifar10"):
        return 10
    if name != "npz" or not data_config.path:
        return None
    import numpy as np
    from pathlib import Path

    path = Path(data_config.path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as archive:
            labels = archive["y_train"]
            return int(np.max(labels)) + 1 if labels.size and np.issubdtype(labels.dtype, np.number) else None
    except Exception:  # noqa: BLE001 - not a readable npz or labels: the data loader says so
        return None


def attack_class_problem(settings: AttackSettings, data_config, inline=None) -> str | None:
    """Why `settings.attack` cannot run on the scenario's data for its class count, or None."""
    if settings.attack != "autoattack_rand":
        return None
    n = class_count(data_config, inline)
    if n is not None and n < AUTOATTACK_MIN_CLASSES:
        return autoattack_class_problem(n).replace("the model has", "the data have")
    return None


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
