"""MinMax: the range is the observed minimum and maximum, nothing is clipped.

The default of most toolkits (e.g. Krishnamoorthi, "Quantizing deep convolutional
networks for efficient inference: a whitepaper", 2018).  Exact for weights; for
activations the extremes of the calibration set.
"""
from dqss.plugin import Strategy, register_strategy, row_minmax


@register_strategy("minmax")
class MinMax(Strategy):
    def weight_range(self, w, spec, ctx):
        return row_minmax(w)

    def act_range(self, stats, spec, ctx):
        return stats.min, stats.max
