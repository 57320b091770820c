"""Per-sample gradients: row i of X is ∂ CE(f(x_i), y_i) / ∂w for the layout's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..layout import Layout


def per_sample_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layout: Layout,
    chunk_size: int = 256,
) -> torch.Tensor:
    """(n, d) matrix of per-example cross-entropy gradients w.r.t. the layout's weights.

    Row i is ∂ CE(f(x_i), y_i) / ∂w (float32), computed in chunks of `chunk_size` examples so
    peak memory stays at about chunk_size·d floats beyond X itself. The model is used in eval mode
    (batch norm uses running statistics, dropout off) and is not modified.

    Two paths give the same numbers:
    - Linear fast path, when every pruned tensor is an `nn.Linear` weight applied once per
      forward and the model is built only from modules that treat examples independently
      (Sequential/MLPNet containers, Linear, element-wise activations, Flatten, Dropout,
      eval-mode BatchNorm1d): one batched forward + backward of Σ_i CE_i gives each layer's
      output gradient δ_i and its input a_i, and row i's block is the outer product δ_i a_iᵀ,
      written straight into X (no per-example graph, no intermediate per-layer copies).
    - General path (any other model, e.g. convolutions): torch.func vmap over grad of a
      single-example loss through `functional_call`.
    """
    was_training = model.training
    model.eval()
    try:
        linears = _independent_linear_layers(model, layout)
        if linears is not None:
            try:
                return _linear_per_sample_gradients(model, x, y, layout, linears, chunk_size)
            except _NotApplicable:
                pass
        return _torch_func_per_sample_gradients(model, x, y, layout, chunk_size)
    finally:
        model.train(was_training)


# Leaf modules that act on each example separately in eval mode.
_PER_EXAMPLE_LEAVES = (
    nn.Linear, nn.Flatten, nn.Identity, nn.Dropout, nn.BatchNorm1d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardtanh,
)


class _NotApplicable(Exception):
    """The Linear fast path found a layer applied more than once; use the general path."""


def _independent_linear_layers(model: nn.Module, layout: Layout) -> dict[str, nn.Linear] | None:
    """layout name → its nn.Linear if the fast path applies to `model`, else None."""
    from ..models.mlpnet import MLPNet

    # Containers whose forward is known to just chain their children (exact type: a subclass
    # may override forward with something that mixes examples).
    containers = (nn.Sequential, MLPNet)
    for module in model.modules():
        if any(True for _ in module.children()):
            if type(module) not in containers:
                return None
        elif not isinstance(module, _PER_EXAMPLE_LEAVES):
            return None
    modules = dict(model.named_modules())
    linears: dict[str, nn.Linear] = {}
    for s in layout.slices:
        owner, _, leaf = s.name.rpartition(".")
        module = modules.get(owner)
        if leaf != "weight" or not isinstance(module, nn.Linear):
            return None
        linears[s.name] = module
    return linears


def _linear_per_sample_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layout: Layout,
    linears: dict[str, nn.Linear],
    chunk_size: int,
) -> torch.Tensor:
    n = x.shape[0]
    X = torch.empty((n, layout.d), dtype=torch.float32)
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def recorder(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name in captured:
                raise _NotApplicable(name)
            captured[name] = (inputs[0], output)

        return hook

    names = list(linears)
    # Blocks are written straight into X, so a chunk only holds activations (about the summed
    # layer widths per example, not d): take as many rows as fit in chunk_size·d floats.
    widths = sum(m.in_features + 2 * m.out_features for m in linears.values())
    rows = max(int(chunk_size), int(chunk_size) * layout.d // max(1, widths))
    handles = [linears[name].register_forward_hook(recorder(name)) for name in names]
    try:
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            captured.clear()
            with torch.enable_grad():
                # The input requires grad so every layer output is in the graph even when the
                # parameters are frozen; only the outputs' gradients are computed.
                xc = x[start:stop].detach().requires_grad_(True)
                loss = nn.functional.cross_entropy(model(xc), y[start:stop], reduction="sum")
                deltas = torch.autograd.grad(loss, [captured[name][1] for name in names])
            for name, delta in zip(names, deltas):
                s = next(sl for sl in layout.slices if sl.name == name)
                a = captured[name][0].detach()
                out_f, in_f = s.shape
                block = X[start:stop, s.offset : s.stop].view(stop - start, out_f, in_f)
                if a.dim() == 2:
                    torch.mul(delta.unsqueeze(2), a.unsqueeze(1), out=block)
                else:  # (n, ..., in): the weight is shared over the middle positions
                    block.copy_(torch.einsum("n...o,n...i->noi", delta, a))
            captured.clear()
        return X
    finally:
        for h in handles:
            h.remove()


def _torch_func_per_sample_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: Layout, chunk_size: int
) -> torch.Tensor:
    from torch.func import functional_call, grad, vmap

    # functional_call swaps tensors into the module and back; with a module used twice (tied
    # weights) torch 2.x restores plain tensors in place of the Parameters, so work on a copy.
    model = copy.deepcopy(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    pruned = {s.name: params[s.name] for s in layout.slices}
    frozen = {k: v for k, v in params.items() if k not in pruned}

    def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**frozen, **p}, buffers), (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    n = x.shape[0]
    X = torch.empty((n, layout.d), dtype=torch.float32)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        g = per_sample(pruned, x[start:stop], y[start:stop])
        X[start:stop] = torch.cat([g[s.name].reshape(stop - start, -1) for s in layout.slices], dim=1)
    return X


def check_supported(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: Layout) -> None:
    """Take per-sample gradients of a few examples once, before any training, so a model the
    gradient code cannot handle fails here with the layer named, not hours into a sweep.

    Raises ParameterError("layer 'name' (Type) ...") naming the innermost module whose forward
    was running when the computation failed (or the error itself if no module was).
    """
    from ..errors import ParameterError

    running: list[str] = []

    def enter(name):
        return lambda module, args: running.append(name)

    def leave(name):
        def hook(module, args, out):
            if running and running[-1] == name:
                running.pop()
        return hook

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave(name)))
    try:
        per_sample_gradients(model, x[:2], y[:2], layout)
    except Exception as exc:  # noqa: BLE001 - anything the user's model raises becomes one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if running:
            name = running[-1]
            kind = type(dict(model.named_modules())[name]).__name__
            raise ParameterError(f"layer {name!r} ({kind}) cannot be handled by the per-sample gradient code: "
                                 f"{type(exc).__name__}: {first}") from None
        raise ParameterError(f"per-sample gradients of this model failed: {type(exc).__name__}: {first}") from None
    finally:
        for h in handles:
            h.remove()
