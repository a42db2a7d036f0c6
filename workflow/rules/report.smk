# Gather every job's metrics.json into the tidy CSV, then tables and figures.
# Every file under results/report/ is also in Snakemake's own report (snakemake --report report.html):
# one category per track, plus "Results"; the captions are workflow/report/*.rst.

# A file's track and kind come from its name (dqss.report names them); each pattern matches one kind of
# file, and the workflow's test checks that together they cover every file the report rule writes.
_TRACKS = "cls_ptq|cls_qat|sr_ptq"
_EXT_FIG, _EXT_TAB = "{ext,png|pdf}", "{ext,md|tex}"
REPORT_FIGURES = [
    "{track,%s}_{metric}_{kind,drop}.%s" % (_TRACKS, _EXT_FIG),  # accuracy drop vs FP
    "{track,%s}_{kind,training_curves}.%s" % (_TRACKS, _EXT_FIG),  # QAT curves
    "{track,%s}_{backbone}_{kind,crops}.%s" % (_TRACKS, _EXT_FIG),  # SR output crops
    "{kind,assign}_{track,%s}_{backbone}.%s" % (_TRACKS, _EXT_FIG),  # DQSS assignment map
    "{kind,softmax_vs_measured}_{track,%s}_{backbone}.%s" % (_TRACKS, _EXT_FIG),
]
REPORT_TABLES = [
    "{kind,gap}_{track,%s}_{backbone}_w{w,\\d+}a{a,\\d+}.%s" % (_TRACKS, _EXT_TAB),  # discretization gap
    "{track,%s}_{dataset}_w{w,\\d+}a{a,\\d+}_{metric}.%s" % (_TRACKS, _EXT_TAB),  # classification
    "{track,%s}_{backbone}_w{w,\\d+}a{a,\\d+}.%s" % (_TRACKS, _EXT_TAB),  # SR
]
FIGURE_KIND = {"drop": "accuracy drop", "training_curves": "training curves", "crops": "output crops",
               "assign": "DQSS assignment", "softmax_vs_measured": "softmax vs measured"}


def figure_labels(wc):
    """The report's columns of a figure (labels must tell every file of one track apart)."""
    kind = FIGURE_KIND[wc.kind] + (f": {wc.metric}" if wc.kind == "drop" else "")
    return {"figure": kind, "backbone": wc.get("backbone", "all"), "format": wc.ext.upper()}


def table_labels(wc):
    if wc.get("kind") == "gap":
        table, of = "discretization gap", wc.backbone
    elif "metric" in wc.keys():
        table, of = wc.metric, f"{wc.dataset} (columns: backbones)"
    else:
        table, of = "PSNR / SSIM", f"{wc.backbone} (columns: test sets)"
    return {"table": table, "dataset / backbone": of, "bits": f"W{wc.w}A{wc.a}",
            "format": {"md": "Markdown", "tex": "LaTeX"}[wc.ext]}


def report_facts():
    """What the captions state about each track of this config: dataset, backbones, bit widths, seeds."""
    facts = {"seeds": ", ".join(map(str, SEEDS)), "n_seeds": len(SEEDS)}
    for track, cfg in TRACK.items():
        if cfg is not None:
            facts[track] = {"dataset": cfg.dataset, "backbones": ", ".join(cfg.backbones),
                            "bits": ", ".join(f"W{w}A{a}" for w, a in cfg.bits),
                            "strategies": ", ".join(cfg.strategies)}
    return facts


rule aggregate:
    """Gather all job metrics into results/metrics.csv (tidy, with provenance)."""
    input:
        all_metric_files(),
    output:
        report("results/metrics.csv", caption="../report/metrics.rst", category="Results",
               labels={"file": "metrics.csv", "content": "every job's metrics (tidy long table)"}),
    params:
        expected=expected_hashes(),
    conda:
        ENV
    log:
        "logs/aggregate.log",
    script:
        "../scripts/aggregate.py"


rule report:
    """Markdown and LaTeX tables with significance marks, gap tables, accuracy-drop plots and DQSS strategy maps."""
    input:
        metrics="results/metrics.csv",
        assignments=all_assignments(),
        histories=all_histories(),
        crops=all_crops(),
        jobs=all_metric_files(),
        selections=all_selections(),
    output:
        # report.md first: the script writes everything into its folder
        md=report("results/report/report.md", caption="../report/report_md.rst", category="Results",
                  labels={"file": "report.md", "content": "every table and figure in one page"}),
        summary=report("results/report/summary.csv", caption="../report/summary.rst", category="Results",
                       labels={"file": "summary.csv", "content": "statistics over seeds per group"}),
        figures=report(directory("results/report/figures"), patterns=REPORT_FIGURES,
                       caption="../report/figure.rst", category="{track}", subcategory="Figures",
                       labels=figure_labels),
        tables=report(directory("results/report/tables"), patterns=REPORT_TABLES,
                      caption="../report/table.rst", category="{track}", subcategory="Tables",
                      labels=table_labels),
    params:
        facts=report_facts(),  # for the report's captions only
    conda:
        ENV
    log:
        "logs/report.log",
    script:
        "../scripts/report.py"
