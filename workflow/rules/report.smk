# Gather every job's metrics.json into the tidy CSV, then tables and figures; the paper's tables.


rule aggregate:
    """Gather all job metrics into results/metrics.csv (tidy, with provenance)."""
    input:
        all_metric_files(),
    output:
        "results/metrics.csv",
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
        "results/report/report.md",
    conda:
        ENV
    log:
        "logs/report.log",
    script:
        "../scripts/report.py"


rule paper_tables:
    """The paper's tables (booktabs LaTeX and Markdown) from results/metrics.csv alone, laid out by paper_tables:."""
    input:
        "results/metrics.csv",
    output:
        paper_outputs(PAPER_TABLES),
    params:
        layouts=layout_params(PAPER_TABLES),
    localrule: True
    conda:
        ENV
    log:
        "logs/paper_tables.log",
    script:
        "../scripts/paper_tables.py"
