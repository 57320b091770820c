"""swap_hw: which pruner keeps the most accuracy when its gradients are noisy, and how the pruned
model then holds up on the same noisy hardware."""

__version__ = "0.1.0"
