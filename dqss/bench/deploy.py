"""The ONNX layouts side by side: what ONNX Runtime computes, and how fast, for each way of storing the codes.

On a finished run of the embedded default (or any config's results), for every classification PTQ backbone,
the DQSS assignment and the held-best uniform strategy of the first seed at each bit width are exported in
every layout of :data:`dqss.deploy.LAYOUTS`, in each placement (:mod:`dqss.core.placement`: the papers' ``layers``
and the ``integer`` graph), and run by ONNX Runtime on the test set:

    python -m dqss.bench.deploy config/config.yaml --runs 20     # after snakemake --cores all

One row per (backbone, method, bits, placement, layout): top-1 of the fake-quantized model and of ONNX Runtime, the
images apart, the top-1 agreement, the kernel this CPU multiplies with (and whether its int16 sums saturate),
and the int8/FP latency medians at batch 1 and 64 (``--runs`` interleaved runs, one thread), measured side by
side in one process.  ``reduced_range`` rows are ONNX Runtime's other advice for CPUs without VNNI: the
held-best uniform strategy with 7-bit weights everywhere (first and last layer too) and 8-bit activations,
stored u8s8 -- a different simulated model (its own ``fake`` top-1), so the price of the advice shows.
Results in ``results/bench_deploy.csv``; the CPU model and its flags are printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def bench_backbone(cfg, backbone: str, layouts: list[str], runs: int, batches: list[int], seed: int = 0,
                   reduced_range: bool = True, placements: tuple[str, ...] = ("layers", "integer")) -> list[dict]:
    from .. import api
    from ..tracks.classification import calibration_tensors, example_input, prepare
    from ..deploy import compare_latency, export_onnx, int8_kernel, integer_kernels, ort_session, run_onnx
    from ..tracks.deploy import models_to_check, placed
    from ..core.layers import fold_batchnorm
    from ..results import DQSS_METHOD, Layout
    from ..tracks.common import load_calibration

    layout = Layout(cfg.task, cfg.dataset)
    prep = prepare(cfg, backbone, layout.model(backbone=backbone))
    ex = example_input(prep)
    folded = fold_batchnorm(prep.model, ex)
    stats = layout.calib("stats.pt", seed, backbone)
    calib = load_calibration(cfg, folded, ex, stats, torch.device("cpu"))
    x = torch.stack([torch.as_tensor(t[0]) for t in prep.data.test])
    labels = torch.as_tensor([int(t[1]) for t in prep.data.test])
    bs = cfg.eval_batch_size
    assignments = [layout.job("assignment.yaml", DQSS_METHOD, w, a, seed, backbone) for w, a in cfg.bits]
    calib_x = torch.split(calibration_tensors(prep, cfg, seed)[0], cfg.calibration.batch_size)
    models = [(m, s, w, a, *placed(cfg, folded, calib, calib_x, where, q, a), layouts)
              for m, s, w, a, q in models_to_check(cfg, folded, calib, assignments) for where in placements]
    if reduced_range:
        ref = next(s for m, s, *_ in models if m == "best_uniform")
        policy = dataclasses.replace(cfg.quant, first_last_bits=None)
        calib7 = api.from_stats(folded, stats, policy, ex, folded=True)
        q7 = api.quantize(folded, calib7, cfg.strategy(ref), w_bits=7, a_bits=8, folded=True)
        models.append(("reduced_range", ref, 7, 8, q7, {"placement": "layers"}, ["u8s8"]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp_path = export_onnx(folded, ex, Path(tmp) / "fp.onnx").path
        fp = ort_session(fp_path)
        for method, strategy, w, a, qmodel, where, lays in models:
            fake = api.outputs(qmodel, torch.split(x, bs))
            right_fake = int((fake.argmax(1) == labels).sum())
            for lay in lays:
                info = export_onnx(qmodel, ex, Path(tmp) / f"{method}_w{w}a{a}_{where['placement']}_{lay}.onnx",
                                   layout=lay)
                session = ort_session(info.path)
                ort = run_onnx(session, x, bs)
                right = int((ort.argmax(1) == labels).sum())
                kernel = int8_kernel(lay)
                row = {"backbone": backbone, "method": method, "strategy": strategy, "w_bits": w, "a_bits": a,
                       "placement": where["placement"], "layout": lay, "fake": round(100 * right_fake / len(x), 2), "ort": round(100 * right / len(x), 2),
                       "images_apart": right - right_fake, "agreement": round(api.agreement(fake, ort), 2),
                       "max_abs_diff": round(float((fake - ort).abs().max()), 4),
                       "int8_kernel": f"{kernel.isa} {kernel.instruction}", "int16_saturation": kernel.saturates,
                       "integer_kernels": sum(integer_kernels(info.path)["integer"].values()),
                       "quantized_layers": len(info.layers)}
                for b in batches:
                    batch = ex.repeat(b, 1, 1, 1)
                    med = compare_latency({"int8": session, "fp": fp}, batch, runs, 3)
                    row[f"int8_ms_b{b}"] = round(1000 * med["int8"], 3)
                    row[f"fp_ms_b{b}"] = round(1000 * med["fp"], 3)
                    row[f"ratio_b{b}"] = round(med["int8"] / med["fp"], 3)
                log.info("%s", row)
                rows.append(row)
    return rows


def main(argv=None) -> int:
    import pandas as pd
    import yaml

    from ..deploy import LAYOUTS, cpu_flags
    from ..results import write_frame
    from ..workflow import track_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the workflow's config file (its results must exist: run the workflow first)")
    p.add_argument("--backbones", nargs="*", help="default: every cls_ptq backbone of the config")
    p.add_argument("--layouts", nargs="*", default=sorted(set(LAYOUTS) - {"grid"}), choices=sorted(LAYOUTS))
    p.add_argument("--runs", type=int, default=20, help="timed runs per latency median (int8 and FP interleaved)")
    p.add_argument("--batches", type=int, nargs="*", default=[1, 64])
    p.add_argument("--no-reduced-range", action="store_true", help="skip the 7-bit-weight u8s8 rows")
    p.add_argument("--placements", nargs="*", default=["layers", "integer"], choices=["layers", "integer"])
    p.add_argument("--out", default="results/bench_deploy.csv")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    with open(args.config) as f:
        cfg = track_config(yaml.safe_load(f), "cls_ptq")
    flags = cpu_flags()
    print(f"CPU: {_cpu_model()}; flags: {sorted(flags & {'avx2', 'avx512bw', 'avx512_vnni', 'avx_vnni', 'amx_int8'})}")
    rows = []
    for bb in args.backbones or list(cfg.backbones):
        rows += bench_backbone(cfg, bb, args.layouts, args.runs, args.batches, reduced_range=not args.no_reduced_range,
                               placements=tuple(args.placements))
    df = pd.DataFrame(rows)
    df["cpu"] = _cpu_model()
    write_frame(args.out, df)
    cols = ["backbone", "method", "strategy", "w_bits", "a_bits", "placement", "layout", "fake", "ort", "images_apart", "agreement",
            "int16_saturation"] + [c for c in df.columns if c.startswith("ratio_b")]
    print(df[cols].to_string(index=False))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
