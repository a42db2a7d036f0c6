"""Helpers shared by test modules of both tiers (tests/unit/, tests/workflow/): a test module imports them from
here (``from helpers import ...``; tests/conftest.py puts tests/ on sys.path), never from another test module.

Running Snakemake in a subprocess (``snakemake``) is for tests/workflow/ only: a unit test that starts it fails
(the guard of tests/unit/conftest.py)."""
from __future__ import annotations

import atexit
import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]  # the repository root
SNAKEMAKE = [sys.executable, "-m", "snakemake"]  # the Snakemake of the Python running the tests (.venv's)
TEST_CONFIG = yaml.safe_load((ROOT / "config/test.yaml").read_text())


# -- configs and Snakemake runs ----------------------------------------------------------------
def write_config(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # key order kept: the first test set is the crop's
    return path


def edited(edit) -> dict:
    """A copy of config/test.yaml that ``edit`` changed in place."""
    cfg = copy.deepcopy(TEST_CONFIG)
    edit(cfg)
    return cfg


def snakemake(*args, cwd=ROOT, check=True) -> subprocess.CompletedProcess:
    """``snakemake ARGS`` as typed in ``cwd`` (the repo root unless a test says otherwise)."""
    return snakemake_each([args], cwd=cwd, check=check)[0]


def snakemake_each(arg_lists, cwd=ROOT, check=True, parallel: int = 2) -> list[subprocess.CompletedProcess]:
    """``snakemake ARGS`` for each ARGS of ``arg_lists``, at most ``parallel`` at once: each a child forked
    from one process that has imported Snakemake and the library (tests/snakefork.py), with this process's
    environment, ``cwd`` and its own output; their results (args, returncode, stdout, stderr) in order."""
    if REFUSE_SNAKEMAKE:
        raise AssertionError(REFUSE_SNAKEMAKE)
    arg_lists = [[str(a) for a in args] for args in arg_lists]
    with _FORK_LOCK:
        rcs, outputs = _fork_server().run(arg_lists, Path(cwd), parallel)
    results = [subprocess.CompletedProcess([*SNAKEMAKE, *args], rc, out, err)
               for args, rc, (out, err) in zip(arg_lists, rcs, outputs)]
    for res, args in zip(results, arg_lists):
        if check and res.returncode != 0:
            raise AssertionError(f"snakemake {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return results


REFUSE_SNAKEMAKE = ""  # set (to why) by tests/unit/conftest.py: the unit tier starts no Snakemake
_FORK_LOCK = threading.Lock()
_SERVER = None


class ForkServer:
    """The client of this test process's tests/snakefork.py (started on first use, ended with the process)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="snakefork-"))
        self.log = self.dir / "server.log"
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("snakefork.py"))], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "w"),
                                     text=True)
        self.count = 0
        atexit.register(self.close)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the server ends when its input closes
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(self, arg_lists, cwd: Path, parallel: int):
        runs, files = [], []
        for args in arg_lists:
            self.count += 1
            out, err = self.dir / f"{self.count}.out", self.dir / f"{self.count}.err"
            runs.append({"args": args, "cwd": str(cwd), "env": dict(os.environ), "out": str(out), "err": str(err)})
            files.append((out, err))
        self.proc.stdin.write(json.dumps({"runs": runs, "parallel": parallel}) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith('{"rcs"'):
                rcs = json.loads(line)["rcs"]
                break
        else:
            raise RuntimeError(f"tests/snakefork.py ended (exit {self.proc.wait()}):\n{self.log.read_text()[-3000:]}")
        outputs = []
        for out, err in files:
            outputs.append((out.read_text(errors="replace"), err.read_text(errors="replace")))
            out.unlink()
            err.unlink()
        return rcs, outputs


def _fork_server() -> ForkServer:
    global _SERVER
    if _SERVER is None or _SERVER.proc.poll() is not None:
        _SERVER = ForkServer()
    return _SERVER


def job_counts(res) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run."""
    counts, table = {}, False
    for line in res.stdout.splitlines():
        if line.startswith("Job stats:"):
            table = True
        parts = line.split()
        if table and len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
        if table and parts and parts[0] == "total":
            break
    counts.pop("total", None)
    return counts


def paper_inputs(base: Path) -> None:
    """Empty stand-ins, under ``base``, for every data folder and weight file config/paper.yaml names
    (a dry run checks that they exist; nothing reads them)."""
    cfg = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
    imagenet = base / cfg["cls_ptq"]["data"]["root"]
    for sub in ("train", "val"):
        (imagenet / sub).mkdir(parents=True)
    cifar = base / cfg["cls_qat"]["data"]["root"] / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (cifar / name).touch()
    sr = cfg["sr_ptq"]
    for spec in [sr["data"]["train"], *sr["data"]["test_sets"].values()]:
        for part in ("hr", "lr"):
            for scale in (2, 4):
                if spec.get(part):
                    (base / sr["data"]["root"] / spec[part].replace("{scale}", str(scale))).mkdir(parents=True,
                                                                                                 exist_ok=True)
    for track in ("cls_ptq", "cls_qat", "sr_ptq"):
        for spec in cfg[track]["backbones"].values():
            w = spec.get("weights")
            if isinstance(w, str) and w not in ("train", "timm"):
                (base / w).parent.mkdir(parents=True, exist_ok=True)
                (base / w).touch()


# -- the tiny config's reference numbers (tests/reference/tiny_metrics.csv) --------------------------------
TINY_REFERENCE = ROOT / "tests/reference/tiny_metrics.csv"


def tiny_reference_moved(work: Path) -> str:
    """The cells of ``work``'s results/metrics.csv that moved from the tiny config's reference beyond the
    reference check's per-metric tolerances (exact for top-1), one line each; empty when none did."""
    from dqss import reference

    return reference.describe(reference.compare(reference.read(TINY_REFERENCE),
                                                reference.read(work / "results/metrics.csv")))


# -- SLURM (the session's tiny run goes through profiles/slurm where test_slurm.py runs: tests/conftest.py) ----
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SLURM_RUN_LIMIT = 1500  # seconds: a SLURM run is killed past this (the plugin polls sacct for ever if accounting is off)


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "(no output)")


def _answers(*cmd: str) -> str | None:
    """None when the command succeeds, else why not."""
    if shutil.which(cmd[0]) is None:
        return f"`{cmd[0]}` is not installed"
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(cmd)}` did not answer within 30 s"
    if res.returncode != 0:
        return f"`{' '.join(cmd)}` failed: {first_line(res.stderr or res.stdout)}"
    return None


def missing_slurm() -> list[str]:
    """Why a SLURM run cannot happen here (empty when it can): the executor plugin, a controller that answers,
    sinfo and accounting (sacct)."""
    why = []
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        why.append("the SLURM executor plugin is not installed (pip install -e .[slurm])")
    ping = _answers("scontrol", "ping")
    if ping is None:
        state = subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout
        ping = None if "UP" in state else f"no SLURM controller is up (`scontrol ping`: {first_line(state)})"
    why += [w for w in (ping, _answers("sinfo"), _answers("sacct", "-n", "-X", "-S", "now")) if w]
    return why


def slurm_overrides() -> list[str]:
    """The command line's changes to profiles/slurm for the tiny run on a small node: 1 thread per job, as a
    local run (torch's results can depend on its thread count, and metrics.csv records it), and memory and
    runtime that fit; the first status check after 5 s rather than 40 (the jobs take seconds).  The executor,
    jobs, latency-wait, partition and the Snakefile's localrules stay as the profile and workflow say."""
    prof = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    rules = sorted(prof["set-threads"])
    return ["--set-threads", *(f"{r}=1" for r in rules),
            "--set-resources", *(f"{r}:{k}={v}" for r in rules for k, v in (("mem_mb", 2000), ("runtime", 30))),
            "--slurm-init-seconds-before-status-checks", "5"]


def slurm_command(work: Path, configfile: Path) -> list[str]:
    """``snakemake --profile profiles/slurm`` on ``configfile`` into ``work`` (run from the repository root),
    under a hard time limit."""
    return ["timeout", "-k", "30", str(SLURM_RUN_LIMIT), *SNAKEMAKE, "--profile", "profiles/slurm",
            "--configfile", str(configfile), "--directory", str(work), *slurm_overrides()]


# -- the config checker (python -m dqss.workflow check) ------------------------------------------
def yte_template(path: Path, marker: Path) -> Path:
    """config/test.yaml as a YTE template whose seeds expression writes ``marker`` (and gives [0])."""
    body = {k: v for k, v in TEST_CONFIG.items() if k != "seeds"}
    path.write_text("__use_yte__: true\n"
                    f"seeds: ?[__import__('pathlib').Path({str(marker)!r}).write_text('ran') * 0]\n"
                    + yaml.safe_dump(body, sort_keys=False))
    return path


def run_check(capsys, path: Path) -> tuple[int, str]:
    """``python -m dqss.workflow check PATH``: its exit status and what it printed."""
    from dqss.workflow import main

    status = main(["check", str(path)])
    out = capsys.readouterr()
    return status, out.out + out.err


BAD_CHECKS = {  # configs the checker (and so the workflow) refuses: the edit of config/test.yaml, the message
    "unknown top-level key": (lambda c: c.update(epochs=3), "Additional properties are not allowed ('epochs'"),
    "dataset escapes results/": (lambda c: c["cls_ptq"].update(dataset="../../escape"),
                                 "cls_ptq.dataset: '../../escape' does not match"),
    "track not a mapping": (lambda c: c.update(cls_ptq=5), "cls_ptq: 5 is not of type 'object'"),
    "duplicate reconstruction method": (
        lambda c: c["cls_ptq"]["reconstruction"].update(methods=["adaround", "brecq", "adaround"]),
        "cls_ptq.reconstruction.methods: ['adaround'] listed more than once"),
    "empty candidates": (lambda c: c["sr_ptq"]["dqss"].update(candidates=[]),
                         "sr_ptq.dqss.candidates: [] lists no strategy; omit the key (or write null)"),
    "rising temperature": (lambda c: c["cls_ptq"]["dqss"].update(tau_start=0.01, tau_end=5.0),
                           "cls_ptq.dqss.tau_start=0.01 is below tau_end=5.0"),
    "rising temperature (QAT)": (lambda c: c["cls_qat"]["dqss"].update(tau_end=2.0),
                                 "cls_qat.dqss.tau_start=1.0 is below tau_end=2.0"),
}


def set_key(section: str, key: str, value):
    return lambda c: c[section].__setitem__(key, value)


def set_in(section: str, sub: str, key: str, value):
    return lambda c: c[section].setdefault(sub, {}).__setitem__(key, value)


# configs the workflow refuses before any job: the edit of config/test.yaml, a part of the message.  Every case is
# checked in-process (tests/unit/test_config_check.py); tests/workflow/test_workflow.py runs two of them through
# Snakemake to show that the errors stop a run before any job.
BAD_CONFIG_LIBRARY = "exceeds the 1204 training images"  # a library check's message (not the schema's)
BAD_CONFIGS = [
    (lambda c: c["cls_ptq"]["backbones"].update({"resnet_nonexistent": {"weights": "train"}}), "unknown backbone"),
    (lambda c: c["cls_ptq"]["strategies"].append("nope"), "registered PTQ strategies"),
    (lambda c: c["cls_ptq"]["bits"].append({"w": 9, "a": 8}), "maximum"),
    (lambda c: c["cls_ptq"]["dqss"].update({"lossy": 1}), "lossy"),
    (lambda c: c["cls_qat"]["strategies"].append("minmax"), "registered QAT strategies"),
    (lambda c: c["cls_qat"]["dqss"].update({"search_fraction": 0}), "search_fraction"),
    (lambda c: c["cls_qat"]["backbones"].update({"resnet21": {"weights": "train"}}), "unknown backbone"),
    (set_in("cls_ptq", "strategy_options", "percentile", {"percentile": 20}), "percentile must lie"),
    (lambda c: c["sr_ptq"]["backbones"].update({"edsr_x9": {"weights": "train"}}), "not supported"),
    (lambda c: c["sr_ptq"]["backbones"].update({"vdsr_x2": {"weights": "train"}}), "unknown SR backbone"),
    (lambda c: c["sr_ptq"]["bits"].append({"w": 8, "a": 1}), "minimum"),
    (lambda c: c["sr_ptq"]["strategies"].append("lsq"), "registered PTQ strategies"),
    (set_in("sr_ptq", "quant", "high_precision", ["neck"]), "neck"),
    (lambda c: c["sr_ptq"]["backbones"]["edsr_tiny_x2"].update({"weights": {"url": "https://x/y.pth",
                                                                           "sha256": "zz"}}), "sha256"),
    # duplicates would be counted twice in every mean and std
    (lambda c: c.update({"seeds": [0, 0]}), "seeds"),
    (lambda c: c["cls_ptq"]["bits"].append({"w": 4, "a": 4}), "non-unique"),
    (lambda c: c.update({"seeds": [2 ** 64]}), "4294967295"),
    (set_in("cls_ptq", "train", "seed", 2 ** 40), "4294967295"),
    # DQSS needs something to choose from
    (set_key("cls_qat", "strategies", ["lsq"]), "at least two"),
    (set_in("sr_ptq", "dqss", "candidates", ["mse"]), "DQSS"),
    # found before any training, not after it
    (set_in("cls_ptq", "calibration", "size", 5000), BAD_CONFIG_LIBRARY),
    (lambda c: c["cls_qat"]["backbones"]["resnet20"].update({"weights": "weights/resnet20_typo.pth"}),
     "cls_qat.backbones.resnet20.weights: weight file weights/resnet20_typo.pth not found"),
    (lambda c: c["sr_ptq"]["backbones"]["edsr_tiny_x2"].update({"weights": "pretrained/edsr.pth"}),
     "sr_ptq.backbones.edsr_tiny_x2.weights: weight file pretrained/edsr.pth not found"),
    (lambda c: c["sr_ptq"]["backbones"]["edsr_tiny_x2"].update({"weights": {"url": "", "sha256": "ab" * 32}}),
     "sr_ptq.backbones.edsr_tiny_x2.weights.url is missing or empty"),
    (lambda c: c["cls_qat"].update({"data": {"name": "cifar10", "root": "nowhere/cifar"}}),
     "cls_qat.data.root: nowhere/cifar/cifar-10-batches-py lacks data_batch_1"),
    (lambda c: c["cls_ptq"].update({"data": {"name": "imagefolder", "root": "nowhere/imagenet"},
                                     "backbones": {"resnet18": {"weights": "timm"}}}),
     "cls_ptq.data.root: directory nowhere/imagenet/train not found. Expected ImageFolder layout"),
]


# -- the paper's Markdown tables -------------------------------------------------------------------
def md_rows(md: str) -> list[list[str]]:
    """The body rows of the Markdown table in ``md`` (cells stripped; bold kept as **x**)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def md_head(md: str) -> list[str]:
    return [c.strip() for c in next(ln for ln in md.splitlines() if ln.startswith("|")).strip("|").split("|")]


def md_cells(md: str) -> dict[tuple[str, str], str]:
    """(row name, column name) -> cell of a classification table."""
    head = md_head(md)
    return {(r[0], h): c for r in md_rows(md) for h, c in zip(head[1:], r[1:])}


def sr_cells(md: str) -> dict[tuple[str, str, str], str]:
    """(model, method, column name) -> cell of the SR table (the model is written on its group's first row)."""
    head, out, model = md_head(md), {}, None
    for r in md_rows(md):
        model = r[0] or model
        out |= {(model, r[1], h): c for h, c in zip(head[2:], r[2:])}
    return out


# -- mixed layers (test_layers.py on the CPU, test_cuda.py on a device) -------------------------------
def mixed_layer(layer, x, names=("minmax", "percentile", "mse", "aciq"), bits=3, seed=0):
    """``layer`` as a mixed layer of ``names`` at ``bits``, calibrated on ``x``, with random logits."""
    from dqss.core.mixed import MixedQuantizer, MixedQuantLayer
    from dqss.core.quant import QuantSpec
    from dqss.core.stats import ActStats
    from dqss.core.strategy import LayerContext, get_strategy

    st = ActStats.of([x], bins=256)
    ctx = LayerContext("l", layer, x)
    w_spec = QuantSpec(bits, per_channel=True)
    a_spec = QuantSpec(bits, signed=None)
    opts = {"mse": {"grid": 20}, "percentile": {"percentile": 99.0}}
    strats = {n: get_strategy(n, opts.get(n)) for n in names}
    wq = MixedQuantizer({n: s.build_weight_quantizer(w_spec, ctx) for n, s in strats.items()})
    aq = MixedQuantizer({n: s.build_act_quantizer(a_spec, st, ctx) for n, s in strats.items()})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        wq.logits.copy_(torch.randn(len(names), generator=g) * 2)
        aq.logits.copy_(torch.randn(len(names), generator=g) * 2)
    return MixedQuantLayer(layer, wq, aq)


def mixed_forward_backward(m, x, mode, r):
    """A mixed layer's output in ``mode`` ("efficient" or "naive") and the gradients of ``(y * r).sum()``:
    (y, weight logits' grad, activation logits' grad, input grad)."""
    m.mode = mode
    for p in (m.weight_quant.logits, m.act_quant.logits):
        p.grad = None
    x = x.clone().requires_grad_(True)
    y = m(x)
    (y * r).sum().backward()
    return y.detach(), m.weight_quant.logits.grad.clone(), m.act_quant.logits.grad.clone(), x.grad


# -- small quantized models and their ONNX Runtime check (test_deploy.py, test_placement.py) ---------
def conv_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))


def depthwise_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 1))


def linear_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 10))


class ResidualNet(nn.Module):
    """stem conv -> relu -> [conv -> relu -> conv] + skip -> relu -> conv -> pool -> logits."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 10, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.head(torch.relu(x + y)).mean((2, 3))


MODELS = {"conv": conv_net, "depthwise": depthwise_net, "linear": linear_net, "residual": ResidualNet}


def images(n, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def build(kind="conv", w=8, a=8, strategy="minmax", policy=None, seed=0):
    """One of ``MODELS``, BN-folded and uniformly quantized at (w, a): (folded, quantized, example input)."""
    from dqss.algorithms.ptq import quantize_uniform
    from dqss.core.layers import QuantPolicy, fold_batchnorm
    from dqss.core.stats import collect_act_stats
    from dqss.core.strategy import get_strategy

    torch.manual_seed(seed)
    model = MODELS[kind]().eval()
    for m in model.modules():  # non-trivial BN statistics, so folding changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    size = 4 if kind == "linear" else 8
    calib = images(32, size, seed=2)
    example = calib[:2]
    folded = fold_batchnorm(model, example)
    plans = (policy or QuantPolicy()).layer_plans(folded, w, a, example)
    stats = collect_act_stats(folded, {n: folded.get_submodule(n) for n in plans}, torch.split(calib, 16),
                              n_samples=16)
    return folded, quantize_uniform(folded, plans, stats, get_strategy(strategy)), example


def last_layer_bound(qmodel) -> float:
    """What one code of difference in every input of the last quantized layer can change its output by."""
    from dqss import deploy

    last = list(deploy.quant_layers(qmodel).values())[-1]
    g = deploy.tensor_grid(last.act_quant)
    wq = last.weight_quant(last.layer.weight).detach()  # a row: every input one output channel sums over
    return float(g.scale) * float(wq.abs().flatten(1).sum(1).max())


def check_outputs(qmodel, path, x):
    """ONNX Runtime's optimised session on the model exported to ``path`` against the fake-quantized model:
    within what one code of difference in every input of the last layer can make."""
    from dqss import deploy

    session = deploy.ort_session(path)
    ref = deploy.torch_outputs(qmodel, x, 16)
    out = deploy.run_onnx(session, x, 5)  # batches of another size than the example: dynamic batch
    assert out.shape == ref.shape
    tol = last_layer_bound(qmodel) + 1e-4 * float(ref.abs().max())
    assert float((out - ref).abs().max()) <= tol
    return ref, out
