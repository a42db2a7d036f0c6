"""PSNR and SSIM as SR papers report them, through basicsr's metric functions.

The protocol: the network's output clamped to [0, 1] and rounded to 8 bit (basicsr's
``tensor2img``), both images converted to the Y channel of YCbCr (BT.601, MATLAB's
``rgb2ycbcr``), ``crop_border`` = scale pixels removed at each edge.  basicsr's numpy functions
take BGR images in 0..255, so our RGB arrays are flipped before the call.
"""
from __future__ import annotations

import numpy as np


def sr_metrics(sr: np.ndarray, hr: np.ndarray, scale: int) -> dict[str, float]:
    """PSNR (dB) and SSIM on the Y channel of two uint8 RGB HWC images, border ``scale`` cropped."""
    from basicsr.metrics.psnr_ssim import calculate_psnr, calculate_ssim

    if sr.shape != hr.shape:
        raise ValueError(f"SR output {sr.shape} and HR image {hr.shape} differ in size")
    sr_bgr, hr_bgr = np.ascontiguousarray(sr[..., ::-1]), np.ascontiguousarray(hr[..., ::-1])
    return {"psnr": float(calculate_psnr(sr_bgr, hr_bgr, crop_border=scale, test_y_channel=True)),
            "ssim": float(calculate_ssim(sr_bgr, hr_bgr, crop_border=scale, test_y_channel=True))}


def mean_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Per-set means over images (how SR tables average)."""
    return {k: float(np.mean([m[k] for m in per_image])) for k in per_image[0]}
