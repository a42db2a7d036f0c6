"""<Name>: one sentence on what the method does to choose a quantization range.

<Authors>, "<Paper title>" (<venue, year>).  Say which statistics it uses (weights:
the tensor itself, one row per output channel; activations: the calibration
statistics in ``dqss.core.stats.ActStats``: min/max, moments, magnitude histograms) and
anything it does differently from the paper.

To add a baseline:
  1. copy this file to ``baselines/<name>.py`` and rename the class;
  2. give the decorator a new name and implement ``weight_range``/``act_range``;
  3. add the name to ``strategies:`` (and options to ``strategy_options:``) in the config.
The package imports every module in ``baselines/``; the new strategy then runs as a
uniform baseline in every table and is a DQSS candidate.  (This file itself is skipped.)
Import from the library through ``dqss.plugin`` only (its docstring lists what each name
is for); the library never imports a baseline.
"""
from dataclasses import dataclass

import torch

from dqss.plugin import Strategy, register_strategy, row_minmax


@register_strategy("template")  # the name used in the config, the tables and the CSV
class Template(Strategy):
    # needs_samples = True   # uncomment to receive a few real layer inputs in ctx.samples

    @dataclass
    class Options:
        """Options from ``strategy_options.<name>`` in the config, validated here."""

        shrink: float = 1.0

        def __post_init__(self):
            if not 0 < self.shrink <= 1:
                raise ValueError(f"shrink must lie in (0, 1], got {self.shrink}")

    def weight_range(self, w: torch.Tensor, spec, ctx):
        """``w`` is ``[channels, elements]`` (one row when per-tensor); return per-row (lo, hi)."""
        lo, hi = row_minmax(w)
        return lo * self.options.shrink, hi * self.options.shrink

    def act_range(self, stats, spec, ctx):
        """Return (lo, hi) floats; ``spec`` says whether the grid is signed or unsigned."""
        return stats.min * self.options.shrink, stats.max * self.options.shrink
