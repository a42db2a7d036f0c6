"""AdaRound: learned up/down rounding of each layer's weights, reconstructing the layer's output.

Nagel et al., "Up or down? Adaptive rounding for post-training quantization" (ICML 2020).
Rectified-sigmoid rounding variables, the annealed regulariser (beta 20 -> 2 after a 20% warm-up,
lambda 0.01), Adam, the layer's output reconstructed on the calibration set with its input taken
from the already-quantized preceding layers.  Activations are not quantized during the weight
reconstruction; their ranges come from a range strategy (``act_strategy``).  The engine and the
formulas are in :mod:`dqss.algorithms.recon`.
"""
from dqss.plugin import Pass, Reconstruction, register_reconstruction


@register_reconstruction("adaround")
class AdaRound(Reconstruction):
    granularity = "layer"
    passes = (Pass(learn_weights=True, learn_acts=False, loss="mse", act_quant=False),)
