"""Is an embedded FP model converged?  Train it with the config's schedule and with a longer one.

The check never looks at the test set: the training images are split into a fit part and a
validation part (a seeded 80/20 split), each schedule trains on the fit part and is measured on the
validation part.  A schedule is converged when the longer one improves validation top-1 by at most
``--tolerance`` points (default 0.5); SR backbones hold out every fourth training image and use
validation PSNR with ``--sr-tolerance`` dB (default 0.05).

    python -m dqss.bench.fp_convergence config/config.yaml --track cls_ptq --factor 2 --out results/fp_convergence.csv
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time

import torch
from torch.utils.data import DataLoader, Subset

log = logging.getLogger(__name__)


def validation_split(n: int, seed: int = 0, fraction: float = 0.2) -> tuple[list[int], list[int]]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = round(fraction * n)
    return sorted(order[k:]), sorted(order[:k])


def check(cfg, backbone: str, epochs: list[int], device) -> list[dict]:
    """Validation top-1 of ``backbone`` trained for each of ``epochs`` with the track's recipe."""
    import timm

    from ..tracks.classification import input_size
    from ..cls.evaluate import predict
    from ..cls.models import data_config, register_models
    from ..cls.data import load_classification
    from ..cls.train import train_classifier

    register_models()
    rows = []
    for e in epochs:
        torch.manual_seed(cfg.train.seed)
        model = timm.create_model(backbone, pretrained=False, num_classes=cfg.num_classes())
        data = load_classification(cfg.data, data_config(model, input_size(cfg)))
        train = data.training_set()
        fit, val = validation_split(len(train), cfg.train.seed)
        t0 = time.perf_counter()
        train_classifier(model, Subset(train, fit), dataclasses.replace(cfg.train, epochs=e), device)
        seconds = time.perf_counter() - t0
        logits, labels = predict(model, DataLoader(Subset(train, val), batch_size=256), device)
        top1 = 100.0 * (logits.argmax(1) == labels).double().mean().item()
        rows.append({"track": cfg.task, "backbone": backbone, "schedule": e, "val_metric": "top1",
                     "val_value": round(top1, 2),
                     "n_fit": len(fit), "n_val": len(val), "train_seconds": round(seconds, 1)})
        log.info("%s %s %d epochs: validation top-1 %.2f (%.0f s)", cfg.task, backbone, e, top1, seconds)
    return rows


def check_sr(cfg, backbone: str, iterations: list[int], device) -> list[dict]:
    """Validation PSNR (Y, crop_border = scale) of an SR backbone trained for each of ``iterations`` on
    all but every fourth training image, measured on those held images."""
    from ..sr.data import load_sr_data
    from ..sr.metrics import sr_metrics
    from ..sr.models import build_sr, parse_backbone
    from ..tracks.sr_ptq import super_resolve
    from ..sr.train import fit_sr

    data = load_sr_data(cfg.data, cfg.scale(backbone), with_test=False)
    val = data.train[::4]
    fit = [p for i, p in enumerate(data.train) if i % 4]
    rows = []
    for n in iterations:
        tc = dataclasses.replace(cfg.train_for(backbone), iterations=n)
        torch.manual_seed(tc.seed)
        model = build_sr(parse_backbone(backbone, cfg.backbones[backbone].get("options"))).to(device).train()
        t0 = time.perf_counter()
        fit_sr(model, fit, tc, data.scale, device, backbone)
        seconds = time.perf_counter() - t0
        model.eval()
        psnr = [sr_metrics(super_resolve(model, p.lr, device), p.hr, data.scale)["psnr"] for p in val]
        rows.append({"track": cfg.task, "backbone": backbone, "schedule": n, "val_metric": "psnr",
                     "val_value": round(float(sum(psnr) / len(psnr)), 3), "n_fit": len(fit), "n_val": len(val),
                     "train_seconds": round(seconds, 1)})
        log.info("%s %s %d iterations: validation PSNR %.3f (%.0f s)", cfg.task, backbone, n, rows[-1]["val_value"],
                 seconds)
    return rows


def main(argv=None) -> int:
    from ..results import write_csv
    from ..tracks import get_track, track_names
    from ..workflow import load_yaml, track_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--track", choices=track_names(), action="append")
    ap.add_argument("--factor", type=float, default=2.0, help="the longer schedule's length over the config's")
    ap.add_argument("--tolerance", type=float, default=0.5, help="top-1 points (classification)")
    ap.add_argument("--sr-tolerance", type=float, default=0.05, help="PSNR dB (SR)")
    ap.add_argument("--out", default="results/fp_convergence.csv")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_yaml(args.config)
    rows = []
    for track in args.track or track_names():
        cfg = track_config(config, track)
        if cfg is None:
            continue
        for backbone in cfg.backbones:
            if cfg.weights(backbone) != "train":
                continue
            if get_track(track).family == "sr":
                base = cfg.train_for(backbone).iterations
                got = check_sr(cfg, backbone, [base, round(base * args.factor)], "cpu")
                tolerance = args.sr_tolerance
            else:
                base = cfg.train.epochs
                got = check(cfg, backbone, [base, round(base * args.factor)], "cpu")
                tolerance = args.tolerance
            gain = got[1]["val_value"] - got[0]["val_value"]
            for r in got:
                r["gain_of_longer"] = round(gain, 3)
                r["converged"] = gain <= tolerance
            rows += got
    write_csv(args.out, rows)
    for r in rows:
        print(r)
    return 0 if all(r["converged"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
