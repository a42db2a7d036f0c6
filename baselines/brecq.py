"""BRECQ: learned rounding reconstructed block by block with the Fisher-diagonal loss.

Li et al., "BRECQ: Pushing the limit of post-training quantization by block reconstruction"
(ICLR 2021).  The units are the backbone's blocks (residual blocks of ResNet/RegNet, inverted
residuals of MobileNetV2, residual blocks of EDSR/MSRResNet; ``dqss.algorithms.recon.BLOCK_TYPES``); the
loss weights each squared output error by ``(|g| + 1)^2`` with ``g`` the task loss's gradient at
the block's output (the reference code's Fisher approximation).  A first pass learns the rounding
with activations in FP; a second learns every activation step (LSQ-style) with the rounding frozen
and activation quantization on, with the plain squared error, as the reference code does.
"""
from dqss.plugin import Pass, Reconstruction, register_reconstruction


@register_reconstruction("brecq")
class BRECQ(Reconstruction):
    granularity = "block"
    learns_acts = True
    passes = (Pass(learn_weights=True, learn_acts=False, loss="fisher", act_quant=False),
              Pass(learn_weights=False, learn_acts=True, loss="mse", act_quant=True))
