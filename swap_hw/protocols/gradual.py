"""`gradual`: multi_stage plus E epochs of masked fine-tuning after each stage — the regime of the
SWAP paper's headline numbers (specs/swap.md §2; staged.py has the algorithm).

With `hwa: {...}` (an HWAConfig; in the older form `finetune: {hwa: {...}}`) every fine-tuning is
hardware-aware: aihwkit's weight-noise injection on analog tiles, the same optimiser, batches and
seeds, masks enforced after every step (noise/hwa.py; docs/hardware_aware.md). Then
"prune → HWA fine-tune → program → drift" is one scenario: list an `analog` condition. The dense
reference of such a run is `Gradual.reference(job)`: the dense model HWA fine-tuned for the same
T × E epochs (staged.finetune_dense), equal to `magnitude` at sparsity 0 under the same protocol.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from torch import nn

from ..errors import ParameterError
from ..noise.hwa import HWAConfig
from ..registry import ADDED_LATER
from .base import PROTOCOLS, PruneJob, PruningProtocol
from .staged import StagedParams, finetune_dense, prune_staged, stage_options


@PROTOCOLS.register("gradual")
class Gradual(PruningProtocol):
    """Prune in stages, fine-tuning (Adam, masks enforced) after each."""

    # a scenario's `finetune:` block held these settings before protocols were a family
    settings_block = "finetune"

    class Params(StagedParams):
        stages: int = Field(10, ge=1, le=1000, description="T: prune → fine-tune rounds (cubic sparsity schedule)")
        epochs: int = Field(1, ge=0, description="E: fine-tuning epochs after each stage, pruned weights held at 0")
        lr: float = Field(1e-3, gt=0, description="Adam learning rate of fine-tuning")
        batch_size: int = Field(64, gt=0, description="fine-tuning minibatch size")
        weight_decay: float = Field(0.0, ge=0, description="weight decay of fine-tuning")
        optimizer: Literal["adam", "sgd"] = Field(
            "adam", json_schema_extra=ADDED_LATER,
            description="fine-tuning optimiser: Adam (default) or SGD with `momentum` (the authors' code: SGD, "
            "lr 1e-3, momentum 0.5 for MLPNet, 0.9 and weight decay 1e-4 for ResNet20)",
        )
        momentum: float = Field(0.0, ge=0, lt=1, json_schema_extra=ADDED_LATER,
                                description="SGD momentum (ignored by Adam)")
        hwa: HWAConfig | None = Field(
            None, json_schema_extra=ADDED_LATER,
            description="hardware-aware fine-tuning: every fine-tuning epoch injects aihwkit weight noise on analog "
            "tiles (noise/hwa.py: noise_type, std_dev, out_noise, inp_res, out_res, clip_sigma, tile_size); "
            "None = digital fine-tuning",
        )

        @field_validator("hwa", mode="before")
        @classmethod
        def _hwa_mapping(cls, value: Any) -> Any:
            if value is True:  # `hwa: true`: the default HWA settings
                return {}
            if value is False:
                return None
            if value is not None and not isinstance(value, (dict, HWAConfig)):
                raise ValueError(f"hwa takes a mapping of HWA settings (noise_type, std_dev, out_noise, inp_res, "
                                 f"out_res, clip_sigma, tile_size), {{}} or true for the defaults; got {value!r}")
            return value

        def described(self) -> dict[str, Any]:
            # the HWA block described by its own rule, so a field added to HWAConfig later (ADDED_LATER)
            # leaves the cell keys of existing HWA runs alone
            data = super().described()
            if self.hwa is not None:
                data["hwa"] = self.hwa.described()
            return data

    def reference(self, job: PruneJob) -> nn.Module:
        """The dense model this protocol's pruned models are compared with. With `hwa` set: the dense
        model HWA fine-tuned as every pruned model is (T calls of E epochs, the same seeds, no mask;
        staged.finetune_dense), needing `job.train_split`; without: `job.model` itself, unchanged (the
        digital gradual protocol has always compared with the dense model as trained)."""
        if self.params.hwa is None:
            return job.model
        if job.train_split is None:
            raise ParameterError("the gradual protocol's HWA dense reference needs the train_split it fine-tunes on")
        model, _ = finetune_dense(job.model, self.params, job.train_split, job.seed)
        return model

    def _schedule(self, pruner, job, weights, target):
        return prune_staged(pruner, job.model, job.source, job.calibration, target, self.params.stages, job.seed,
                            job.layout, finetune=self.params, train_split=job.train_split, first_grads=job.grads,
                            **stage_options(self.params, job), **job.storage)
