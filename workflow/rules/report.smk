# Gather every job's metrics.json into the tidy CSV, then tables and figures; the paper's tables.
# Every file under results/report/ is also in Snakemake's own report (snakemake --report report.html):
# one category per track, plus "Results"; the captions are workflow/report/*.rst, the patterns and labels
# of its files are in common.smk.


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
        deploy=DEPLOY_SUMMARY,
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


rule paper_tables:
    """The paper's tables (booktabs LaTeX and Markdown) from results/metrics.csv alone, laid out by paper_tables:."""
    input:
        "results/metrics.csv",
    output:
        paper_outputs(PAPER_TABLES),
    params:
        layouts=layout_params(PAPER_TABLES),
        kinds={t: get_track(t).table for t in PAPER_TABLES},  # cls or sr: the layout of each track's table
    localrule: True
    conda:
        ENV
    log:
        "logs/paper_tables.log",
    script:
        "../scripts/paper_tables.py"


# snakemake --cores all reconstruction: the reconstruction baselines and dqss_recon beside every default row
rule reconstruction_aggregate:
    """Gather the default target's metrics and the reconstruction jobs' into results/reconstruction/metrics.csv."""
    input:
        recon_metric_files(),
    output:
        "results/reconstruction/metrics.csv",
    params:
        expected=recon_hashes(),
    conda:
        ENV
    log:
        "logs/reconstruction_aggregate.log",
    script:
        "../scripts/aggregate.py"


rule reconstruction_report:
    """The report's tables and figures with the reconstruction baselines and dqss_recon as rows."""
    input:
        metrics="results/reconstruction/metrics.csv",
        assignments=all_assignments(),
        histories=all_histories(),
        crops=recon_crops(),
        jobs=recon_metric_files(),
        selections=all_selections(),
    output:
        md="results/reconstruction/report/report.md",
        summary="results/reconstruction/report/summary.csv",
        figures=directory("results/reconstruction/report/figures"),
        tables=directory("results/reconstruction/report/tables"),
    conda:
        ENV
    log:
        "logs/reconstruction_report.log",
    script:
        "../scripts/report.py"


rule reconstruction:
    """Target: the reconstruction baselines (reconstruction.methods of the PTQ tracks) and dqss_recon."""
    input:
        "results/reconstruction/metrics.csv",
        "results/reconstruction/report/report.md",
        recon_metric_files(),  # each job's result too, so that a deleted one is recomputed (see rule all)
