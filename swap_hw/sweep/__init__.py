"""Sweeps: planning cells, preparing data and the dense model, pruning and evaluating a cell
(`prune_cell`), executors, running a scenario, exporting a pruned model."""
