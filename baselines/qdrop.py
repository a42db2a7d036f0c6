"""QDrop: block reconstruction with activation quantization randomly dropped.

Wei et al., "QDrop: Randomly dropping quantization for extremely low-bit post-training
quantization" (ICLR 2022).  BRECQ's blocks; the rounding and the activation steps are learned in
one pass with activation quantization on, and during the reconstruction every activation element
(the block's input included) is left in full precision with probability ``drop_prob`` (0.5).  The
loss is the plain squared error of the block's output, as in the reference code.
"""
from dqss.plugin import Pass, Reconstruction, register_reconstruction


@register_reconstruction("qdrop")
class QDrop(Reconstruction):
    granularity = "block"
    learns_acts = True
    passes = (Pass(learn_weights=True, learn_acts=True, loss="mse", act_quant=True, drop=True),)
