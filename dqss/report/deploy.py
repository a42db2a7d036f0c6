"""The report's table of the deployment check: ``results/deploy/deploy.csv`` (the ``deploy_summary`` job) as one
Markdown and LaTeX table per track."""
from __future__ import annotations

from ..results import DQSS_METHOD
from .format import tex_text

AGREEMENT_TARGET = 99.5  # % top-1 agreement below which the report marks a row


def deploy_tables(df) -> dict[str, tuple[str, str]]:
    """``{stem: (markdown, latex)}``: one table per task of the deployment check.  A classification row whose
    top-1 agreement is below :data:`AGREEMENT_TARGET` is marked ``(!)`` and named in a note under the table."""
    out = {}
    for task, g in df.groupby("task", sort=True):
        lat = sorted(int(c.rsplit("_b", 1)[1]) for c in g.columns if c.startswith("latency_ratio_b"))
        cls = (g["metric"] == "top1").all()
        head = (["backbone", "method", "bits", "placement", "layout"]
                + (["top-1 fake", "top-1 ORT", "Δ images", "agreement %", "max abs Δ logit", "top-1 ORT unoptimised"]
                   if cls else ["test set", "PSNR fake", "PSNR ORT", "Δ PSNR", "max abs Δ pixel",
                                "PSNR ORT unoptimised"])
                + ["int8 kernel", "integer kernels", "size int8/FP"] + [f"latency int8/FP b{b}" for b in lat])
        rows, low = [], []
        for _, r in g.iterrows():
            method = r["method"] if r["method"] == DQSS_METHOD else f"{r['strategy']} (best uniform)"
            bits = f"W{r['w_bits']}A{r['a_bits']}" + (" (int8 grid)" if r["emulated_layers"] else "")
            if cls:
                mark = r["agreement"] < AGREEMENT_TARGET
                if mark:
                    low.append(f"{r['backbone']} {method} {bits} {r['placement']} {r['layout']}")
                cells = [f"{r['fake']:.2f}", f"{r['ort']:.2f}", f"{int(r['diff_items']):+d}",
                         f"{r['agreement']:.2f}" + (" (!)" if mark else ""),
                         f"{r['max_abs_diff']:.4f}", f"{r['ort_unoptimized']:.2f}"]
            else:
                cells = [r["dataset"], f"{r['fake']:.3f}", f"{r['ort']:.3f}", f"{r['diff']:+.3f}",
                         f"{r['max_abs_diff']:.4f}", f"{r['ort_unoptimized']:.3f}"]
            kernel = str(r["int8_kernel"]) + (" (int16 saturation)" if bool(r["int16_saturation"]) else "")
            rows.append([r["backbone"], method, bits, r["placement"], r["layout"], *cells, kernel,
                         f"{int(r['integer_kernels'])}/{int(r['quantized_layers'])}", f"{r['size_ratio']:.3f}"]
                        + [f"{r[f'latency_ratio_b{b}']:.2f}" for b in lat])
        note = (f"(!) top-1 agreement below {AGREEMENT_TARGET:g} %: " + "; ".join(low) + ".") if low else ""
        md = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
        md += "".join("| " + " | ".join(map(str, row)) + " |\n" for row in rows)
        md += f"\n{note}\n" if note else ""
        n_left = 5 + (not cls)
        tex = ("\\begin{tabular}{" + "l" * n_left + "r" * (len(head) - n_left) + "}\n\\toprule\n"
               + " & ".join(tex_text(h) for h in head) + " \\\\\n\\midrule\n"
               + "".join(" & ".join(tex_text(c) for c in row) + " \\\\\n" for row in rows)
               + "\\bottomrule\n\\end{tabular}\n" + (f"\n{tex_text(note)}\n" if note else ""))
        out[f"deploy_{task}"] = (md, tex)
    return out
