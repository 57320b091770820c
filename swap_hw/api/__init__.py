"""The Python front door: `Study` (a scenario on your own model and data), `Results` and `prune`
(one pruner call on your model). Members are built from the family packages: ``swap_hw.sources``
(= swap_hw.gradients), ``swap_hw.pruners``, ``swap_hw.conditions`` (= swap_hw.deploy),
``swap_hw.protocols`` — e.g. ``sh.sources.Analog(noise_model="pcm", drift_time="1d")``. See docs/api.md."""

from .prune import prune
from .study import Results, Study

__all__ = ["Study", "Results", "prune"]
