# Gather every job's metrics.json into the tidy CSV, then tables and figures.


def all_metric_files():
    return cls_ptq_targets()


def all_assignments():
    return [p.replace("metrics.json", "assignment.yaml") for p in cls_ptq_targets() if "/dqss/" in p]


rule aggregate:
    """Gather all job metrics into results/metrics.csv (tidy, with provenance)."""
    input:
        all_metric_files(),
    output:
        "results/metrics.csv",
    log:
        "logs/aggregate.log",
    script:
        "../scripts/aggregate.py"


rule report:
    """Markdown and LaTeX tables, accuracy-drop plots and DQSS strategy maps."""
    input:
        metrics="results/metrics.csv",
        assignments=all_assignments(),
    output:
        "results/report/report.md",
    log:
        "logs/report.log",
    script:
        "../scripts/report.py"
