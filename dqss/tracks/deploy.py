"""The deployment check job: the DQSS assignment and the best uniform strategy of a PTQ track, exported to
ONNX (QuantizeLinear/DequantizeLinear with the suite's scales, :mod:`dqss.deploy`) and run as integers by
ONNX Runtime's CPU execution provider, against the fake-quantized PyTorch model on the same test inputs.

One job per (track, backbone), on the first seed's calibration and assignments; one CSV row per (method, bit
width).  "Best uniform" is the uniform strategy the DQSS selection found best on the calibration's held part
(``reference_uniform`` of the assignment file): chosen on calibration data, never on the test set.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import torch

from .. import api
from ..options import check_options, option
from .config import check_names
from ..results import DQSS_METHOD, load_assignment, provenance, write_frame

log = logging.getLogger(__name__)

COLUMNS = ["task", "dataset", "backbone", "method", "strategy", "w_bits", "a_bits", "seed", "placement", "layout",
           "metric", "fake", "ort", "diff", "diff_items", "n_items", "agreement", "max_abs_diff", "ort_unoptimized",
           "agreement_unoptimized", "int8_kernel", "int16_saturation", "emulated_layers", "quantized_layers",
           "integer_points", "unplaced_points", "integer_kernels", "float_kernels", "fp_bytes", "int8_bytes",
           "size_ratio"]


@dataclass
class DeploySection:
    """A PTQ track's ``deploy:`` section: the ONNX Runtime check of ``deploy_check`` (part of ``all``)."""

    enabled: bool = True  # run deploy_check for this track (false: no results/deploy rows for it)
    runs: int = option(20, ge=1)  # timed runs per latency median (after warmup)
    warmup: int = option(3, ge=0)  # untimed runs before them
    batch_sizes: list[int] = option(factory=lambda: [1, 64], min_items=1)  # latency batches
    threads: int = option(1, ge=1)  # ONNX Runtime intra-op threads (the job's one core)
    test_items: int | None = option(None, ge=1)  # test items compared (evenly spaced); null = the whole test set
    opset: int = option(17, ge=13, le=21)  # ONNX opset of the export
    # containers of the activation and weight codes (dqss.deploy.LAYOUTS); u8u8 runs exactly on every x86 CPU
    layouts: list[str] = option(factory=lambda: ["u8u8"], choices=["u8u8", "u8s8", "s8s8", "grid"], min_items=1)
    # where the activation quantizers sit (dqss.core.placement): the papers' "layers" (the tables' models) and
    # "integer" (also the inputs and outputs of residual adds and concatenations and the inputs of pooling)
    placements: list[str] = option(factory=lambda: ["layers", "integer"], choices=["layers", "integer"], min_items=1)
    # the range strategy of an integer-graph tensor that no quantized layer reads (one a layer reads takes its quantizer)
    integer_strategy: str = "mse"
    # their bits (the int8 runtime's container; null = the run's activation bits, e.g. 4-bit adds at W4A4)
    integer_bits: int | None = option(8, ge=2, le=8)

    def __post_init__(self):
        check_options(self)
        check_names([self.integer_strategy], "deploy.integer_strategy", "ptq")


def _latency_columns(sessions: dict, ex: torch.Tensor, sec: DeploySection) -> dict:
    """Median ms per call of the int8 and the FP session at each batch size (``ex`` repeated), and their ratio."""
    from ..deploy import compare_latency

    out = {}
    for b in sec.batch_sizes:
        batch = ex[:1].repeat(b, *[1] * (ex.dim() - 1))
        med = compare_latency(sessions, batch, sec.runs, sec.warmup)
        out[f"fp_ms_b{b}"] = round(1000 * med["fp"], 4)
        out[f"int8_ms_b{b}"] = round(1000 * med["int8"], 4)
        out[f"latency_ratio_b{b}"] = round(med["int8"] / med["fp"], 4)
    return out


def _kernels(path, info, threads: int) -> dict:
    from ..deploy import int8_kernel, integer_kernels

    k = integer_kernels(path, threads)
    kernel = int8_kernel(info.layout)
    return {"layout": info.layout, "int8_kernel": f"{kernel.isa} {kernel.instruction}",
            "int16_saturation": kernel.saturates, "emulated_layers": len(info.emulated),
            "quantized_layers": len(info.layers), "integer_kernels": sum(k["integer"].values()),
            "float_kernels": sum(k["float"].values())}


def test_subset(n: int, items: int | None) -> list[int]:
    """Indices of the test items compared: all, or ``items`` evenly spaced over the set (a class-sorted
    ImageFolder's first N would be its first classes only)."""
    if items is None or items >= n:
        return list(range(n))
    return sorted({int(i) for i in torch.linspace(0, n - 1, items).round()})


def models_to_check(cfg, folded, calib, assignments: list[str]) -> list[tuple[str, str, int, int, torch.nn.Module]]:
    """(method, strategy, w, a, quantized model) for DQSS and the held-best uniform strategy at each bit width,
    in the papers' placement."""
    out = []
    for path in assignments:
        a = load_assignment(path)
        w, ab = int(a["w_bits"]), int(a["a_bits"])
        ref = a.get("reference_uniform")
        if not ref:
            raise RuntimeError(f"{path} names no reference_uniform (the held-best uniform strategy); it predates "
                               "this version: delete it and rerun its DQSS job")
        out.append((DQSS_METHOD, "per layer", w, ab, api.from_assignment(folded, calib, a, folded=True)))
        out.append(("best_uniform", ref, w, ab,
                    api.quantize(folded, calib, cfg.strategy(ref), w_bits=w, a_bits=ab, folded=True)))
    return out


class OrtModule(torch.nn.Module):
    """An ONNX Runtime session as a module (CPU tensors in and out), so a track's own evaluation runs it."""

    def __init__(self, session, batch_size: int = 64):
        super().__init__()
        self.session, self.batch_size = session, batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..deploy import run_onnx

        return run_onnx(self.session, x.cpu(), self.batch_size)


def placed(cfg, folded, calib, batches, placement: str, qmodel, a_bits: int) -> tuple[torch.nn.Module, dict]:
    """``qmodel`` in ``placement`` (for ``integer``, a copy by :func:`dqss.api.integer_graph` on the calibration
    ``batches``, its own tensors on ``deploy.integer_bits``, else ``a_bits``) and the placement's columns."""
    if placement == "layers":
        return qmodel, {"placement": placement, "integer_points": 0, "unplaced_points": 0}
    qmodel = api.integer_graph(folded, qmodel, calib, batches, bits=cfg.deploy.integer_bits or a_bits,
                               strategy=cfg.strategy(cfg.deploy.integer_strategy), folded=True)
    report = qmodel.integer_placement
    return qmodel, {"placement": placement, "integer_points": len(report.points),
                    "unplaced_points": len(report.unplaced)}


def check_job(cfg, backbone: str, seed: int, folded, ex, calib, batches, assignments, table, export_target,
               compare) -> None:
    """Export FP and each model to check in each placement (integer-graph ones calibrated on ``batches``), compare
    each in ONNX Runtime (``compare(qmodel, session)`` -> the rows of its metric, without the shared columns), time
    both, write ``table``."""
    from importlib.metadata import version

    import pandas as pd

    from ..deploy import export_onnx, ort_session

    sec = cfg.deploy
    assignments = [assignments] if isinstance(assignments, (str, Path)) else list(assignments)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp_path = Path(tmp) / "fp.onnx"
        export_onnx(export_target(folded), ex, fp_path, opset=sec.opset, **_dynamic(cfg))
        fp_session = ort_session(fp_path, sec.threads)
        for (method, strategy, w, a, model), where, layout in product(
                models_to_check(cfg, folded, calib, assignments), sec.placements, sec.layouts):
            qmodel, where_cols = placed(cfg, folded, calib, batches, where, model, a)
            q_path = Path(tmp) / f"{method}_w{w}a{a}_{where}_{layout}.onnx"
            info = export_onnx(export_target(qmodel), ex, q_path, opset=sec.opset, layout=layout, **_dynamic(cfg))
            session = ort_session(q_path, sec.threads)
            unoptimized = ort_session(q_path, sec.threads, optimize=False)
            shared = {"task": cfg.task, "backbone": backbone, "method": method, "strategy": strategy, "w_bits": w,
                      "a_bits": a, "seed": seed, **where_cols, **_kernels(q_path, info, sec.threads),
                      "fp_bytes": fp_path.stat().st_size, "int8_bytes": q_path.stat().st_size,
                      "size_ratio": round(q_path.stat().st_size / fp_path.stat().st_size, 4),
                      **_latency_columns({"int8": session, "fp": fp_session}, ex, sec)}
            for r in compare(qmodel, session, unoptimized):
                rows.append({**shared, **r})
                log.info("%s %s W%dA%d %s %s %s: fake %.4f, ONNX Runtime %.4f", backbone, method, w, a, where,
                         layout, r["dataset"], r["fake"], r["ort"])
    prov = provenance(torch.device("cpu"), cfg.raw)
    df = pd.DataFrame(rows)
    df = df[[c for c in COLUMNS if c in df.columns] + [c for c in df.columns if c not in COLUMNS]]
    df["onnxruntime"], df["cpu"], df["config_hash"] = version("onnxruntime"), prov["cpu"], prov["config_hash"]
    write_frame(table, df)


def _dynamic(cfg) -> dict:
    """SR inputs are whole test images of any size: height and width are dynamic too."""
    from . import get_track

    return {"dynamic_hw": get_track(cfg.task).family == "sr"}


class LastOutput(torch.nn.Module):
    """A model that keeps its last output (the raw network output, beside the 8-bit image made of it)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.last = model, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last = self.model(x)
        return self.last


# -- the summary --------------------------------------------------------------------------------------
def summarize_tables(paths: list, out) -> None:
    """Every deploy_check CSV in one table (``results/deploy/deploy.csv``), rows in a fixed order."""
    import pandas as pd

    frames = [pd.read_csv(p) for p in paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    if len(df):
        # the papers' placement ("layers") before the integer graph
        df = df.sort_values(["task", "backbone", "w_bits", "a_bits", "method", "placement"],
                            ascending=[True, True, False, False, True, False], kind="stable")
    write_frame(out, df)
    log.info("%d deployment rows from %d tables", len(df), len(paths))
