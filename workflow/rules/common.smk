# Config validation, the job settings every rule passes, and the lists every track's rules expand over.
# (dqss is the installed package: pip install -e . from the repository root)
from dqss.results import (BICUBIC_METHOD, DQSS_ARGMAX, DQSS_METHOD, DQSS_NOFIX, DQSS_RECON, DQSS_RETRAIN, FP_METHOD, PTQ_DQSS_METHODS,
                          REFERENCE_METHODS, Layout, config_hash, is_dqss)
from dqss.report.paper import layout_params, paper_outputs
from dqss.tracks import get_track, tracks as registered_tracks
from dqss.workflow import apply_config_args, check_config, job_settings, pin_cpu_kernels, valid_backbones_pattern

# --config values as a config file's (Snakemake reads seeds=[0] as ['0'])
apply_config_args(config, workflow.config_settings.config)
# exactly the checks of `python -m dqss.workflow check FILE`: the JSON schema workflow/schemas/config.schema.yaml
# (generated from the config dataclasses: python -m dqss.schema --write; the config is kept as written, which every
# job's settings hash is computed from), then the library's
CHECKED = check_config(config)
SEEDS = CHECKED.seeds

# every registered track's config (dqss.tracks: one module each), None when the config leaves the track out
TRACK = CHECKED.tracks
# the Track records of the tracks the config has, in the registry's order: the Snakefile includes their rules files
CONFIGURED = [t for t in registered_tracks() if TRACK[t.name] is not None]
# the existing tracks' configs under the names their rules files use (a track's rules file may as well use TRACK[name])
CLS_PTQ, CLS_QAT, SR_PTQ = TRACK["cls_ptq"], TRACK["cls_qat"], TRACK["sr_ptq"]
PAPER_TABLES = CHECKED.paper_tables  # the layout of the paper's tables (paper_tables:), one per track configured
DEVICE = config.get("device", "auto")
CPU_KERNELS = pin_cpu_kernels(config)  # every job inherits the kernel dispatch of this process
GPU = 0 if DEVICE == "cpu" else 1


wildcard_constraints:
    seed=r"\d+",
    w=r"\d+",
    a=r"\d+",
    backbone=valid_backbones_pattern(config),


ENV = "../envs/dqss.yaml"

# results/{task}/{dataset}/{backbone}/{method}/w{W}a{A}/seed{S}/... (dqss.results owns the layout)
LAYOUT = {t: Layout(t, cfg.dataset if cfg else "none") for t, cfg in TRACK.items()}
CLS, QAT, SR = LAYOUT["cls_ptq"], LAYOUT["cls_qat"], LAYOUT["sr_ptq"]  # the existing tracks' rules files' names


def settings(track, job):
    """The keys of the track's config a job reads (its params): an edit of one reruns exactly its jobs."""
    return lambda wc: job_settings(TRACK[track], job, wc.backbone, wc.get("method"))


def local_weights(cfg, backbone):
    """A local weight file is an input: replacing it reruns what used it."""
    return cfg.weight_file(backbone) or []


def fp_weights(track):
    """The input function of the weights a job of ``track`` loads: the checkpoint trained here ('train'), the
    downloaded file ('url'), or the local weight file; nothing for timm weights."""

    def inputs(wildcards):
        cfg = TRACK[track]
        source = cfg.weight_source(wildcards.backbone)
        if source == "train":
            return LAYOUT[track].model(backbone=wildcards.backbone)
        if source == "url":
            return cfg.download_path(wildcards.backbone)
        return local_weights(cfg, wildcards.backbone)

    return inputs


cls_checkpoint, qat_checkpoint, sr_checkpoint = (fp_weights(t) for t in ("cls_ptq", "cls_qat", "sr_ptq"))


def sr_fp_file(backbone, file):
    return SR.fp(file, SR_PTQ.train.seed, backbone)


def metric_jobs():
    """Every job result the tables use, as (metrics.json path, track, job, backbone, method)."""
    out = []
    for track, layout in LAYOUT.items():
        cfg = TRACK[track]
        if cfg is None:
            continue
        references, methods = cfg.reference_methods(), cfg.methods()
        for bb in cfg.backbones:
            for m in references:
                out.append((layout.fp("metrics.json", cfg.train.seed, bb, m), track, "evaluate_fp", bb, m))
            for seed in SEEDS:
                for w, a in cfg.bits:
                    for m in methods:
                        job = "dqss" if is_dqss(m) else "uniform"
                        out.append((layout.job("metrics.json", m, w, a, seed, bb), track, job, bb, m))
    return out


def targets(track):
    return [p for p, t, *_ in metric_jobs() if t == track]


def expected_hashes():
    """The settings hash each result must carry under the current config (the aggregate checks it)."""
    return {p: config_hash(job_settings(TRACK[t], job, bb, m if get_track(t).jobs_per_method else None))
            for p, t, job, bb, m in metric_jobs()}


def sr_uniform_outputs():
    if SR_PTQ is None:
        return {}
    return {
        (m, w, a): [SR.job(f, m, w, a) for f in ("metrics.json", "crop.png")]
        for w, a in SR_PTQ.bits
        for m in SR_PTQ.strategies
    }


def all_crops():
    """The SR outputs' crops the report composes into its figure."""
    crops = [p.replace("metrics.json", "crop.png") for p in targets("sr_ptq")]
    return crops + [sr_fp_file(bb, "crop_gt.png") for bb in (SR_PTQ.backbones if SR_PTQ else [])]


def qat_methods_pattern():
    return "|".join(CLS_QAT.strategies) if CLS_QAT else "none"


def uniform_outputs():
    if CLS_PTQ is None:
        return {}
    return {
        (m, w, a): CLS.job("metrics.json", m, w, a)
        for w, a in CLS_PTQ.bits
        for m in CLS_PTQ.strategies
    }


def all_metric_files():
    return [p for p, *_ in metric_jobs()]


def all_assignments():
    return [p.replace("metrics.json", "assignment.yaml") for p, _, job, _, m in metric_jobs()
            if job == "dqss" and m != DQSS_RETRAIN]


def all_selections():
    """The selection records of the PTQ tracks' DQSS jobs (the report's discretization-gap tables)."""
    return [p.replace("metrics.json", "selection.json") for p, t, job, _, m in metric_jobs()
            if TRACK[t].kind != "qat" and m == DQSS_METHOD]


def all_histories():
    """The QAT training curves."""
    return [p.replace("metrics.json", "train.csv") for p, t, job, *_ in metric_jobs()
            if TRACK[t].kind == "qat" and job != "evaluate_fp"]


# -- Snakemake's own report (snakemake --report report.html; the rules in report.smk) ------------------
# A file's track and kind come from its name (dqss.report names them); each pattern matches one kind of
# file, and the workflow's test checks that together they cover every file the report rule writes.
_TRACKS = "|".join(t.name for t in registered_tracks())
_EXT_FIG, _EXT_TAB = "{ext,png|pdf}", "{ext,md|tex}"
REPORT_FIGURES = [
    "{track,%s}_{metric}_{kind,drop}.%s" % (_TRACKS, _EXT_FIG),  # accuracy drop vs FP
    "{track,%s}_{kind,training_curves}.%s" % (_TRACKS, _EXT_FIG),  # QAT curves
    "{track,%s}_{backbone}_{kind,crops}.%s" % (_TRACKS, _EXT_FIG),  # SR output crops
    "{kind,assign}_{track,%s}_{backbone}.%s" % (_TRACKS, _EXT_FIG),  # DQSS assignment map
    "{kind,softmax_vs_measured}_{track,%s}_{backbone}.%s" % (_TRACKS, _EXT_FIG),
]
REPORT_TABLES = [
    "{kind,deploy}_{track,%s}.%s" % (_TRACKS, _EXT_TAB),  # deployment check in ONNX Runtime
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
    elif wc.get("kind") == "deploy":
        return {"table": "deployment check (ONNX Runtime)", "dataset / backbone": "all backbones",
                "bits": "all", "format": {"md": "Markdown", "tex": "LaTeX"}[wc.ext]}
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


# -- the reconstruction baselines (AdaRound, BRECQ, QDrop): a target of their own ------------------------
# snakemake --cores all reconstruction: each configured method's jobs, dqss_recon (DQSS with them as frozen
# candidates), and results/reconstruction/{metrics.csv,report/} beside every row of the default target.
RECON = {t: cfg for t, cfg in TRACK.items() if getattr(cfg, "reconstruction", None) and cfg.reconstruction.methods}


def recon_pattern(track):
    return "|".join(TRACK[track].reconstruction.methods) if track in RECON else "none"


def recon_jobs():
    """(metrics.json path, track, job, backbone, method) of every reconstruction job and dqss_recon job."""
    out = []
    for track, cfg in RECON.items():
        rows = [(m, "reconstruct") for m in cfg.reconstruction.methods]
        if cfg.reconstruction.as_candidates:
            rows.append((DQSS_RECON, "dqss_recon"))
        for bb in cfg.backbones:
            for seed in SEEDS:
                for w, a in cfg.bits:
                    for m, job in rows:
                        out.append((LAYOUT[track].job("metrics.json", m, w, a, seed, bb), track, job, bb, m))
    return out


def recon_states(layout, cfg):
    """The files of a dqss_recon job's candidates, in reconstruction.methods order."""
    return lambda wc: [layout.job("reconstruction.pt", m, wc.w, wc.a, wc.seed, wc.backbone)
                       for m in cfg.reconstruction.methods]


def recon_metric_files():
    return all_metric_files() + [p for p, *_ in recon_jobs()]


def recon_hashes():
    return expected_hashes() | {p: config_hash(job_settings(TRACK[t], job, bb, m)) for p, t, job, bb, m in recon_jobs()}


def recon_crops():
    return all_crops() + [p.replace("metrics.json", "crop.png") for p, t, *_ in recon_jobs() if t == "sr_ptq"]


# -- the deployment check (deploy.smk) ------------------------------------------------------------------
DEPLOY_TRACKS = {t.name: LAYOUT[t.name] for t in registered_tracks() if t.deploy}  # the tracks with deploy:
DEPLOY_PATTERN = "|".join(DEPLOY_TRACKS)  # deploy_check's {track}


def deploy_tables():
    """One CSV per backbone of each PTQ track whose deploy.enabled is true, on the first seed."""
    return [f"results/deploy/{t}/{bb}_seed{SEEDS[0]}.csv" for t in DEPLOY_TRACKS
            if TRACK[t] is not None and TRACK[t].deploy.enabled for bb in TRACK[t].backbones]


# the summary table, when a track runs the check (all and the report take it)
DEPLOY_SUMMARY = ["results/deploy/deploy.csv"] if deploy_tables() else []


def deploy_inputs(wc):
    cfg, layout = TRACK[wc.track], DEPLOY_TRACKS[wc.track]
    ckpt = fp_weights(wc.track)(wc)
    return {"ckpt": ckpt, "stats": layout.calib("stats.pt", wc.seed, wc.backbone),
            "assignments": [layout.job("assignment.yaml", DQSS_METHOD, w, a, wc.seed, wc.backbone)
                            for w, a in cfg.bits]}
