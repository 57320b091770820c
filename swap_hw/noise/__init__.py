"""Deployment-side noise: the only modules that import aihwkit (hardware) and torchattacks (attacks)."""
