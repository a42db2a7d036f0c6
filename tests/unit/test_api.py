"""The public flow (dqss.api) on outside models: torchvision, timm and basicsr, through the API only."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dqss
from dqss.core.layers import QuantLayer, QuantPolicy

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("single_thread")


def _quant_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def _images(n=48, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_torchvision_resnet18_through_the_api():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _images()
    calib = dqss.calibrate(model, DataLoader(TensorDataset(x, y), batch_size=16))
    assert len(calib.quantized) == 21 and not calib.skipped  # 20 convs and the fc
    assert len(calib.folded_bn) == 20 and ("conv1", "bn1") in calib.folded_bn
    report = calib.report(4, 4)
    assert re.search(r"^conv1\s+Conv2d\s+W8A8$", report, re.M)  # first and last layer at 8 bits
    assert re.search(r"^layer1\.0\.conv1\s+Conv2d\s+W4A4$", report, re.M)
    assert "21 layers quantized, 0 left in full precision; 20 batch norms folded" in report
    q = dqss.quantize(model, calib, "minmax", w_bits=8, a_bits=8)
    assert set(_quant_layers(q)) == set(calib.quantized)
    assert all(m.weight_quant.strategy == "minmax" for m in _quant_layers(q).values())
    # the user's model is untouched: same weights, BN still there
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    fp, q8 = dqss.outputs(model, [x]), dqss.outputs(q, [x])
    assert (q8 - fp).abs().max() < 0.05 * fp.abs().max()  # W8A8 stays close to FP
    assert dqss.top1(q, DataLoader(TensorDataset(x, y), batch_size=16)) == pytest.approx(
        100 * float((q8.argmax(1) == y).float().mean()))


def test_timm_model_search_and_from_assignment(tmp_path):
    import timm

    from dqss.results import load_assignment, save_assignment

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_050", num_classes=10).eval()
    x, y = _images(64)
    calib = dqss.calibrate(model, torch.split(x, 32), samples=4)
    found = dqss.search_assignment(model, calib, x, w_bits=4, a_bits=4, candidates=("minmax", "mse"),
                                   config={"iterations": 3, "batch_size": 16, "top_k": 1, "sweeps": 1},
                                   batch_size=32)
    names = [e["name"] for e in found.assignment["layers"]]
    assert names == list(found.plans) and set(names) == set(calib.quantized)
    assert found.assignment["select"] == "measured" and found.argmax["select"] == "argmax"
    path = tmp_path / "assignment.yaml"
    save_assignment(found.assignment, path)
    q = dqss.from_assignment(model, calib, str(path))  # the file round trip
    chosen = {e["name"]: (e["weight"], e["act"]) for e in load_assignment(path)["layers"]}
    got = {n: (m.weight_quant.strategy, m.act_quant.strategy) for n, m in _quant_layers(q).items()}
    assert got == chosen
    # the same model as the search's own pinned choice
    from dqss.core.mixed import pinned
    from dqss.algorithms.ptq import assignment_choice

    with pinned(found.outcome.qmodel, assignment_choice(found.assignment, found.plans, found.strategies)) as ref:
        assert torch.allclose(dqss.outputs(ref, [x[:8]]), dqss.outputs(q, [x[:8]]), atol=1e-5)


def test_basicsr_model_with_the_sr_policy():
    from dqss.sr.models import build_sr, parse_backbone
    from dqss.tracks.sr_ptq import SRQuantPolicy

    torch.manual_seed(0)
    net = build_sr(parse_backbone("edsr_tiny_x2"))
    x = torch.rand(8, 3, 12, 12)
    calib = dqss.calibrate(net, [x[:4], x[4:]], SRQuantPolicy())
    assert "net.conv_first" in calib.skipped and "the head" in calib.skipped["net.conv_first"]
    assert "the tail" in calib.skipped["net.conv_last"]
    assert "net.body.0.conv1" in calib.quantized
    q = dqss.quantize(net, calib, "percentile", w_bits=8, a_bits=8)
    assert set(_quant_layers(q)) == set(calib.quantized)
    out = dqss.outputs(q, [x])
    assert out.shape == (8, 3, 24, 24)
    assert (out - dqss.outputs(net, [x])).abs().max() < 0.05


@pytest.mark.parametrize("name", ["rcan_tiny_x4", "swinir_tiny_x2", "msrresnet_tiny_x4"])
def test_every_sr_preset_passes_the_strict_survey(name):
    from dqss.sr.models import build_sr, parse_backbone
    from dqss.tracks.sr_ptq import SRQuantPolicy

    net = build_sr(parse_backbone(name))
    calib = dqss.calibrate(net, [torch.rand(2, 3, 16, 16)], SRQuantPolicy(), bins=64, samples=0)
    assert calib.quantized and all(r.kind in ("Conv2d", "Linear") for r in calib.layers if r.quantized)


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "regnetx_002", "resnet20", "mobilenetv2_100_cifar"])
def test_paper_backbones_pass_the_strict_survey(name):
    import timm

    import dqss.cls.cifar_models  # noqa: F401  (registers the CIFAR backbones with timm)

    model = timm.create_model(name, num_classes=10).eval()
    calib = dqss.calibrate(model, [torch.rand(2, 3, 32, 32)], bins=64, samples=0)
    assert not calib.skipped and len(calib.quantized) > 10


# -- what it leaves alone, and the errors ----------------------------------------------------------
class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.extra = nn.Parameter(torch.randn(4, 4, 1, 1))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.conv2d(self.conv(x), self.extra).mean((2, 3)))


class Upsampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)

    def forward(self, x):
        return self.up(self.conv(x))


def test_a_functional_conv_is_an_error_unless_accepted():
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"'\(the model's forward\)' calls F\.conv2d.*strict=False"):
        dqss.calibrate(Functional(), [x])
    calib = dqss.calibrate(Functional(), [x], strict=False)
    assert calib.quantized == ["conv", "fc"]
    assert "functional F.conv2d" in calib.skipped["(the model's forward)"]


def test_an_unsupported_layer_type_needs_keep_fp():
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"'up' is a ConvTranspose2d.*policy\.keep_fp"):
        dqss.calibrate(Upsampler(), [x])
    calib = dqss.calibrate(Upsampler(), [x], QuantPolicy(keep_fp=["up"], first_last_bits=None))
    assert calib.quantized == ["conv"] and "ConvTranspose2d is not quantized" in calib.skipped["up"]


def test_layer_types_and_keep_fp_are_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4 * 36, 2))
    calib = dqss.calibrate(model, [torch.rand(4, 3, 8, 8)], QuantPolicy(layer_types=["conv2d"], keep_fp=["2"]))
    assert calib.quantized == ["0"]
    assert calib.skipped == {"2": "keep_fp pattern '2'", "4": "the policy's layer_types ['conv2d'] exclude it"}


def test_no_quantizable_layer():
    with pytest.raises(ValueError, match="no nn.Conv2d/nn.Linear layer that the policy"):
        dqss.calibrate(nn.Sequential(nn.ReLU(), nn.Flatten()), [torch.rand(2, 3, 4, 4)])


@pytest.mark.parametrize("batches, error, message", [
    ([torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)], TypeError, r"dtype torch\.uint8.*x\.float\(\) / 255"),
    ([torch.rand(4, 1, 8, 8)], ValueError, r"cannot run an input of shape \(1, 1, 8, 8\)"),
    ([torch.rand(4, 3, 8, 8), torch.rand(4, 3, 9, 9)], ValueError, r"batch 1 has items of shape \(3, 9, 9\)"),
    ((torch.rand(4, 3, 8, 8) for _ in range(2)), TypeError, r"re-iterable.*list\(\.\.\.\)"),
    (torch.rand(4, 3, 8, 8), TypeError, r"not one tensor"),
    ([[1, 2]], TypeError, r"batch 0 is a int, not a tensor"),
])
def test_bad_batches_name_the_fix(batches, error, message):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with pytest.raises(error, match=message):
        dqss.calibrate(model, batches)


def test_statistics_of_another_model_are_refused():
    a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    calib = dqss.calibrate(a, [torch.rand(2, 3, 8, 8)])
    with pytest.raises(ValueError, match="calibrate this model again"):
        dqss.quantize(b, calib, "minmax")


def test_unknown_strategy_names_the_registry():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))
    calib = dqss.calibrate(model, [torch.rand(2, 3, 8, 8)])
    with pytest.raises(KeyError, match="unknown strategy 'nope'.*baselines/TEMPLATE.py"):
        dqss.quantize(model, calib, "nope")


# -- the README's example and the deployment page's, run as written -------------------------------------
DEPLOY_PAGE = "docs/deployment.md"  # the deployment example, run after the README's in its namespace


def readme_example(mark: str = "api-example", page: str = "README.md") -> str:
    text = (ROOT / page).read_text()
    m = re.search(rf"<!-- {mark} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"{page} lost its example marked <!-- {mark} -->"
    return m.group(1)


def test_readme_example_is_short():
    lines = [ln for ln in readme_example().splitlines() if ln.strip()]
    assert len(lines) <= 15, len(lines)


@pytest.mark.slow
def test_readme_examples_run(capsys, tmp_path, monkeypatch):
    """The README's API example, then the deployment page's example in its namespace (as the pages chain them)."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    out = capsys.readouterr().out
    assert "layers quantized" in out and re.search(r"W8A8 top-1 \d", out) and re.search(r"DQSS W4A4 top-1 \d", out)
    exec(compile(readme_example("deploy-example", DEPLOY_PAGE), DEPLOY_PAGE, "exec"), scope)
    first, integer = capsys.readouterr().out.strip().splitlines()[-2:]
    agreement, kernels = first.split(" ", 1)
    assert float(agreement) >= 99.0 and "QLinearConv" in kernels and "QLinearAdd" not in kernels
    # the integer graph: torchvision's residual adds (its block reuses one ReLU module) run as QLinearAdd
    assert "'QLinearAdd': 8" in integer, integer
    assert (tmp_path / "resnet18_w8a8.onnx").is_file() and (tmp_path / "resnet18_w8a8_integer.onnx").is_file()


def test_the_suite_jobs_call_the_api():
    """The tracks' PTQ jobs build their models through dqss.api (so the documented flow cannot rot)."""
    src = (ROOT / "dqss" / "tracks" / "common.py").read_text()
    for fn in ("api.calibrate(", "api.from_stats(", "api.quantize(", "api.search_assignment("):
        assert fn in src, fn
    for private in ("collect_act_stats(", "quantize_uniform(", "search_and_select("):
        assert private not in src, private
