"""Per-sample gradients: row i of X is ∂ CE(f(x_i), y_i) / ∂w for the layout's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..layout import Layout


# Memory for one chunk's per-example work (activations, unfolded inputs, per-example gradients)
# beyond X itself; a chunk holds as many examples as fit.
DEFAULT_CHUNK_MB = 256.0


def per_sample_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layout: Layout,
    chunk_size: int | None = None,
    chunk_mb: float = DEFAULT_CHUNK_MB,
    info: dict | None = None,
) -> torch.Tensor:
    """(n, d) matrix of per-example cross-entropy gradients w.r.t. the layout's weights.

    Row i is ∂ CE(f(x_i), y_i) / ∂w (float32). Examples are taken in chunks sized in bytes: as many
    as fit `chunk_mb` MiB of per-chunk work (estimated from one example's activations), or exactly
    `chunk_size` when given. The model is used in eval mode (batch norm uses running statistics,
    dropout off) and is not modified. `info`, if given, receives the path taken and the chunk's
    row count (recorded with the gradients' provenance).

    Three paths give the same numbers (to float rounding):
    - Linear fast path, when every pruned tensor is an `nn.Linear` weight applied once per
      forward and the model is built only from modules known to treat examples independently
      (Sequential/MLPNet containers, Linear, element-wise activations, Flatten, Dropout,
      eval-mode BatchNorm1d): one batched forward + backward of Σ_i CE_i gives each layer's
      output gradient δ_i and its input a_i, and row i's block is the outer product δ_i a_iᵀ,
      written straight into X (no per-example graph, no intermediate per-layer copies).
    - Batched path for convolutions, when every pruned tensor is the weight of an `nn.Linear` or a
      zero-padded `nn.Conv2d` (grouped and depthwise too) applied once per forward, in any model
      (residual connections, eval-mode BatchNorm, nested modules): the same one forward + backward,
      and a conv's per-example weight gradient is δ_i (C_out × L) times the unfolded input
      unfold(a_i)ᵀ (L × C_in·kh·kw / groups), per group, written into X. Examples must not
      interact in the forward; that is checked once per call by comparing the first chunk's first
      two rows with the torch.func path, which takes over if they differ.
    - General path (anything else): torch.func vmap over grad of a single-example loss through
      `functional_call`.
    """
    was_training = model.training
    model.eval()
    # a fresh copy: batched kernels may round differently for a view at another memory offset,
    # and the same examples must give the same X however the caller holds them
    x = x.detach().clone(memory_format=torch.contiguous_format)
    try:
        linears = _independent_linear_layers(model, layout)
        if linears is not None:
            try:
                rows = chunk_size or _linear_rows(linears, layout)
                X = _batched_per_sample_gradients(model, x, y, layout, linears, rows, verify=False)
                _report(info, "linear", rows)
                return X
            except _NotApplicable:
                pass
        layers = _batched_layers(model, layout)
        acts, cols, max_cols = _activation_floats(model, x[:1]) if x.shape[0] else (0, 0, 0)
        # Unfolding costs memory traffic ∝ the unfolded inputs, torch.func ∝ the per-example
        # work; measured on 2 CPU threads: batched 3.6 s vs torch.func 5.7 s for 128 examples of
        # MobileNetV1/32×32 (unfolded inputs 0.5·d), but 0.79 s vs 0.55 s for ResNet20 (5.7·d),
        # so the batched path is taken where the unfolded inputs are at most BATCHED_MAX_COLS·d.
        if layers is not None and x.shape[0] > 0 and cols <= BATCHED_MAX_COLS * layout.d:
            try:
                # per example: the activations autograd keeps (about twice the leaf outputs), then one
                # layer at a time its unfolded input and its gradient block before it lands in X
                rows = chunk_size or _rows(chunk_mb, 2 * acts + max_cols + max(m.weight.numel() for m in layers.values()))
                X = _batched_per_sample_gradients(model, x, y, layout, layers, rows, verify=True)
                _report(info, "batched", rows)
                return X
            except _NotApplicable:
                pass
        # vmap keeps every example's activations and its gradient (d floats) at once
        rows = chunk_size or _rows(chunk_mb, 3 * acts + 2 * layout.d)
        _report(info, "torch.func", rows)
        return _torch_func_per_sample_gradients(model, x, y, layout, rows)
    finally:
        model.train(was_training)


BATCHED_MAX_COLS = 2.0


def _rows(chunk_mb: float, floats_per_example: int) -> int:
    """Examples per chunk: as many as fit `chunk_mb` MiB of float32 per-example work."""
    return max(1, int(chunk_mb * 2**20) // max(1, 4 * int(floats_per_example)))


def _report(info: dict | None, path: str, rows: int) -> None:
    if info is not None:
        info.update(per_sample_path=path, chunk_rows=int(rows))


# Leaf modules that act on each example separately in eval mode.
_PER_EXAMPLE_LEAVES = (
    nn.Linear, nn.Flatten, nn.Identity, nn.Dropout, nn.BatchNorm1d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardtanh,
)


class _NotApplicable(Exception):
    """A batched path found a layer applied more than once, or examples that interact."""


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


def _batched_layers(model: nn.Module, layout: Layout) -> dict[str, nn.Module] | None:
    """layout name → its nn.Linear / zero-padded nn.Conv2d, if every pruned tensor is one's weight."""
    modules = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for s in layout.slices:
        owner, _, leaf = s.name.rpartition(".")
        module = modules.get(owner)
        ok = isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
                                               and not isinstance(module.padding, str))
        if leaf != "weight" or not ok:
            return None
        out[s.name] = module
    return out


def _linear_rows(linears: dict[str, nn.Linear], layout: Layout, chunk_size: int = 256) -> int:
    # Blocks are written straight into X, so a chunk only holds activations (about the summed
    # layer widths per example, not d): take as many rows as fit in chunk_size·d floats.
    widths = sum(m.in_features + 2 * m.out_features for m in linears.values())
    return max(int(chunk_size), int(chunk_size) * layout.d // max(1, widths))


def _activation_floats(model: nn.Module, x1: torch.Tensor) -> tuple[int, int, int]:
    """For one example: (floats every leaf module outputs, floats of all convs' unfolded inputs,
    the largest one conv's)."""
    sizes = [0, 0, 0]

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor):
            sizes[0] += output.numel()
        if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor):
            kh, kw = module.kernel_size
            unfolded = module.in_channels * kh * kw * output.shape[-2] * output.shape[-1]
            sizes[1] += unfolded
            sizes[2] = max(sizes[2], unfolded)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return sizes[0], sizes[1], sizes[2]


def _conv_block(module: nn.Conv2d, a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Per-example weight gradients (n, C_out, C_in/g, kh, kw) of a conv from its input a and
    output gradient δ: per group, δ (C_out/g × L) times unfold(a)ᵀ (L × C_in/g·kh·kw)."""
    n, g = a.shape[0], module.groups
    cols = nn.functional.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding,
                                stride=module.stride)  # (n, C_in·kh·kw, L)
    cols = cols.view(n, g, -1, cols.shape[-1])
    d = delta.reshape(n, g, module.out_channels // g, -1)
    grads = torch.einsum("ngol,ngkl->ngok", d, cols)
    return grads.reshape(n, *module.weight.shape)


def _batched_per_sample_gradients(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layout: Layout,
    layers: dict[str, nn.Module],
    rows: int,
    verify: bool,
) -> torch.Tensor:
    n = x.shape[0]
    X = torch.empty((n, layout.d), dtype=torch.float32, device=x.device)  # X lives where the batch does
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def recorder(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name in captured:
                raise _NotApplicable(name)
            captured[name] = (inputs[0], output)

        return hook

    names = list(layers)
    slices = {s.name: s for s in layout.slices}
    handles = [layers[name].register_forward_hook(recorder(name)) for name in names]
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
                s, module = slices[name], layers[name]
                a = captured[name][0].detach()
                block = X[start:stop, s.offset : s.stop]
                if isinstance(module, nn.Conv2d):
                    block.copy_(_conv_block(module, a, delta).reshape(stop - start, -1))
                    continue
                out_f, in_f = s.shape
                block = block.view(stop - start, out_f, in_f)
                if a.dim() == 2:
                    torch.mul(delta.unsqueeze(2), a.unsqueeze(1), out=block)
                else:  # (n, ..., in): the weight is shared over the middle positions
                    block.copy_(torch.einsum("n...o,n...i->noi", delta, a))
            captured.clear()
            if verify and start == 0:
                _check_independent(model, x, y, layout, X, stop)
        return X
    finally:
        for h in handles:
            h.remove()


def _check_independent(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: Layout, X: torch.Tensor,
                       stop: int) -> None:
    """The batched trick is exact only if examples do not interact in the forward: compare the
    first chunk's first rows (computed alongside the others) with the torch.func path."""
    if stop < 2:
        return
    m = min(2, stop)
    reference = _torch_func_per_sample_gradients(model, x[:m], y[:m], layout, m)
    scale = float(reference.abs().max()) or 1.0
    if not torch.allclose(X[:m], reference, rtol=1e-3, atol=1e-5 * scale):
        raise _NotApplicable("examples interact in the forward pass")


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
    X = torch.empty((n, layout.d), dtype=torch.float32, device=x.device)  # X lives where the batch does
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
