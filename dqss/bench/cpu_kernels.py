"""What does ``cpu_kernels: avx2`` cost, and what does it change?  Every embedded FP model trained and
measured under both kernel dispatches, side by side in one run.

Each (backbone, mode) unit runs in its own process (the dispatch is fixed when the libraries load): the
FP training job and the FP test evaluation of the workflow, on one thread as in the workflow.  The two
modes alternate in order (native first for one backbone, avx2 first for the next, and so on), so a
slow spell of the machine hits both.  ``--fraction`` scales every training schedule (0.25: a quarter
of the epochs or iterations) for a quicker speed measurement; at 1 the metrics are the workflow's own FP
rows under each mode.

    python -m dqss.bench.cpu_kernels config/config.yaml --fraction 1 --out results/bench_cpu_kernels.csv
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)
MODES = ("native", "avx2")


def scaled(section: dict, track: str, fraction: float) -> dict:
    """A track section whose training schedules are ``fraction`` of the config's (at least one step)."""
    s = copy.deepcopy(section)
    if fraction == 1:
        return s
    train = s.setdefault("train", {})
    from ..tracks import get_track

    key = "iterations" if get_track(track).family == "sr" else "epochs"
    from ..tracks.sr_ptq import SRTrainConfig
    from ..cls.train import TrainConfig

    default = getattr(SRTrainConfig if key == "iterations" else TrainConfig, key)
    train[key] = max(1, round(train.get(key, default) * fraction))
    for spec in s.get("backbones", {}).values():
        own = (spec or {}).get("train") or {}
        if key in own:
            own[key] = max(1, round(own[key] * fraction))
    return s


def worker(config_path: str, track: str, backbone: str, fraction: float) -> dict:
    """Train and evaluate one FP backbone in this process; its seconds and test metric."""
    import torch

    from ..tracks import get_track
    from ..workflow import load_yaml

    torch.set_num_threads(1)
    record = get_track(track)
    cfg = record.config.from_dict(scaled(load_yaml(config_path)[track], track, fraction), track)
    out = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    t0 = time.perf_counter()
    if record.family == "sr":
        from ..tracks.sr_ptq import run_evaluate_fp, run_train

        run_train(cfg, backbone=backbone, ckpt=out / "model.pt", history=out / "train.csv", device="cpu")
        run_evaluate_fp(cfg, backbone=backbone, seed=0, ckpt=out / "model.pt", fp=out / "fp.json",
                        bicubic=out / "bic.json", gt_crop=out / "gt.png", fp_crop=out / "fp.png",
                        bicubic_crop=out / "bicubic.png", device="cpu")
        results = json.loads((out / "fp.json").read_text())["results"]
        metric, value = "psnr", statistics.fmean(r["metrics"]["psnr"] for r in results)
    else:
        from ..tracks.classification import run_evaluate_fp, run_train

        run_train(cfg, backbone=backbone, ckpt=out / "model.pt", history=out / "train.csv", device="cpu")
        run_evaluate_fp(cfg, backbone=backbone, seed=0, ckpt=out / "model.pt", metrics=out / "fp.json",
                        logits=out / "logits.pt", device="cpu")
        metric, value = "top1", json.loads((out / "fp.json").read_text())["metrics"]["top1"]
    return {"seconds": time.perf_counter() - t0, "metric": metric, "value": value,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def run_unit(config: str, track: str, backbone: str, mode: str, fraction: float) -> dict:
    from ..workflow import CPU_KERNEL_ENV

    env = {k: v for k, v in os.environ.items() if k not in CPU_KERNEL_ENV["avx2"]}
    env.update(CPU_KERNEL_ENV[mode])
    cmd = [sys.executable, "-m", "dqss.bench.cpu_kernels", config, "--worker", track, backbone,
           "--fraction", str(fraction)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{track}/{backbone} under {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dqss.bench.cpu_kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default="config/config.yaml")
    ap.add_argument("--fraction", type=float, default=1.0, help="part of each training schedule (default 1)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tracks", nargs="*", help="default: every registered track (dqss.tracks)")
    ap.add_argument("--out", type=Path, default=Path("results/bench_cpu_kernels.csv"))
    ap.add_argument("--worker", nargs=2, metavar=("TRACK", "BACKBONE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0 < args.fraction <= 1:
        ap.error("--fraction must lie in (0, 1]")
    if args.worker:
        print(json.dumps(worker(args.config, *args.worker, args.fraction)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from ..tracks import track_names
    from ..workflow import load_yaml

    config = load_yaml(args.config)
    units = [(t, b) for t in (args.tracks or track_names()) if t in config for b in config[t]["backbones"]
             if (config[t]["backbones"][b] or {}).get("weights", "train") == "train"]
    rows = []
    for r in range(args.repeats):
        for i, (track, backbone) in enumerate(units):
            for mode in (MODES if (i + r) % 2 == 0 else MODES[::-1]):
                res = run_unit(args.config, track, backbone, mode, args.fraction)
                rows.append({"track": track, "backbone": backbone, "mode": mode, "repeat": r,
                             "fraction": args.fraction, **res})
                log.info("%s %s %s: %.1f s, %s %.4f (%s)", track, backbone, mode, res["seconds"], res["metric"],
                         res["value"], res["cpu_capability"])
    summary = []
    for track, backbone in units:
        med = {m: statistics.median(x["seconds"] for x in rows if (x["backbone"], x["mode"]) == (backbone, m))
               for m in MODES}
        mine = [x for x in rows if x["backbone"] == backbone]
        val = {m: next(x["value"] for x in mine if x["mode"] == m) for m in MODES}
        summary.append({"track": track, "backbone": backbone, "native_s": round(med["native"], 1),
                        "avx2_s": round(med["avx2"], 1), "ratio": round(med["avx2"] / med["native"], 3),
                        "metric": mine[0]["metric"],
                        "native": round(val["native"], 4), "avx2": round(val["avx2"], 4)})
    total = {m: sum(s[f"{m}_s"] for s in summary) for m in MODES}
    summary.append({"track": "all", "backbone": "total", "native_s": round(total["native"], 1),
                    "avx2_s": round(total["avx2"], 1), "ratio": round(total["avx2"] / total["native"], 3)})
    from ..results import write_csv

    write_csv(args.out, summary)
    write_csv(args.out.with_name(args.out.stem + "_runs.csv"), rows)
    for s in summary:
        log.info("%s", s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
