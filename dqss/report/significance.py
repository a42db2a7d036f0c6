"""Paired significance of a difference between two methods on the same test images.

Two methods evaluated on the same images differ by a few images at most in many table cells; a
difference that size is noise.  These tests pair the per-image outcomes (recorded by every job as
``per_image`` in its ``metrics.json``):

* 0/1 outcomes (top-1, agreement with FP): McNemar's exact test on the discordant images;
* continuous values (kl_fp, PSNR, SSIM): a paired bootstrap interval of the mean difference; with
  fewer than ``EXACT_BELOW`` images (an SR test set of a handful of photographs) the exact sign-flip
  randomization test instead, since a percentile bootstrap of three values calls any three differences
  of one sign significant.

Several seeds of one method are pooled image by image: McNemar counts the discordant pairs of every
seed; the bootstrap resamples images and averages each image's difference over the seeds.
"""
from __future__ import annotations

import math

import numpy as np

ALPHA = 0.05
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
BINARY = frozenset({"top1", "top5", "agree_fp"})
EXACT_BELOW = 17  # images: 2**16 sign patterns at most


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact p-value of McNemar's test: ``b`` images only the first method got right, ``c``
    only the second (a binomial test of b against n = b + c at one half)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # integers: exact, no overflow beyond n = 1023
    return min(1.0, 2.0 * tail)


def bootstrap_interval(diffs: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
                       alpha: float = ALPHA) -> tuple[float, float]:
    """Percentile interval (1 - alpha) of the mean of per-image differences, resampling images."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if len(diffs) == 0:
        raise ValueError("no paired images to compare")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(samples, len(diffs)))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def sign_flip_p(diffs: np.ndarray) -> float:
    """Exact two-sided p-value of the paired randomization test: the fraction of the 2**n sign patterns
    whose mean difference is at least as far from zero as the observed one."""
    diffs = np.asarray(diffs, dtype=np.float64)
    n = len(diffs)
    signs = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
    means = np.abs(signs @ diffs) / n
    return float((means >= abs(diffs.mean()) - 1e-12 * max(1.0, abs(diffs.mean()))).mean())


def compare(first: list[list[float]], second: list[list[float]], metric: str, *, lower_is_better: bool = False,
            alpha: float = ALPHA) -> dict:
    """Is ``first`` significantly better or worse than ``second``?  Each is a list (one per seed, paired
    seed by seed) of per-image values on the same images.  Returns ``{"verdict": "better" | "worse" |
    "ns", "test": ..., "p" or "interval": ...}``."""
    if len(first) != len(second) or not first:
        raise ValueError(f"compare: {len(first)} and {len(second)} seeds; they must be paired seed by seed")
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"compare: per-image values of shapes {a.shape} and {b.shape} are not paired")
    if metric in BINARY:
        only_a = int(((a > 0.5) & (b < 0.5)).sum())
        only_b = int(((a < 0.5) & (b > 0.5)).sum())
        p = mcnemar_exact(only_a, only_b)
        verdict = "ns" if p >= alpha or only_a == only_b else ("better" if only_a > only_b else "worse")
        return {"verdict": verdict, "test": "mcnemar", "p": p, "only_first": only_a, "only_second": only_b}
    diffs = (a - b).mean(0)  # per image, averaged over seeds
    if len(diffs) < EXACT_BELOW:
        p = sign_flip_p(diffs)
        mean = float(diffs.mean())
        if p >= alpha or mean == 0:
            return {"verdict": "ns", "test": "signflip", "p": p, "mean_diff": mean}
        verdict = "better" if (mean > 0) != lower_is_better else "worse"
        return {"verdict": verdict, "test": "signflip", "p": p, "mean_diff": mean}
    lo, hi = bootstrap_interval(diffs, alpha=alpha)
    if lo > 0 or hi < 0:
        higher = lo > 0
        verdict = "better" if higher != lower_is_better else "worse"
    else:
        verdict = "ns"
    return {"verdict": verdict, "test": "bootstrap", "interval": [lo, hi], "mean_diff": float(diffs.mean())}
