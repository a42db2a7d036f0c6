"""The config's JSON schema is generated from the config dataclasses: the checked-in file is current,
every section field is in it with a description, the shipped configs pass it, it refuses bad values,
and the library's own errors name the full key of the value at fault."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from dqss.options import build_section
from dqss.schema import COMMAND, SCHEMA_PATH, class_description, config_schema, dataclass_sections, render
from dqss.tracks import get_track, tracks
from dqss.workflow import check_top_level, track_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ("config/config.yaml", "config/paper.yaml", "config/test.yaml")
TEST_CONFIG = yaml.safe_load((ROOT / "config/test.yaml").read_text())
SCHEMA = config_schema()
TRACKS = tuple(t.name for t in tracks())  # the registered tracks (dqss.tracks)


def _sections():
    """(track, section key, dataclass) of every dataclass section of every track."""
    return [(t.name, name, cls) for t in tracks() for name, cls in dataclass_sections(t.config).items()]


def test_checked_in_schema_is_current():
    assert SCHEMA_PATH == ROOT / "workflow/schemas/config.schema.yaml"
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), \
        f"workflow/schemas/config.schema.yaml is stale: regenerate it with `{COMMAND}` and commit it"


def test_schema_text_is_deterministic_and_has_no_anchors():
    text = render()
    assert text == render()
    assert text.startswith("# Generated from the config dataclasses") and COMMAND in text.splitlines()[1]
    assert "&id" not in text and "*id" not in text


@pytest.mark.parametrize("track, section, cls", _sections(), ids=lambda v: getattr(v, "__name__", v))
def test_every_section_field_is_described(track, section, cls):
    props = SCHEMA["properties"][track]["properties"][section]
    assert class_description(cls), f"{cls.__name__} needs a docstring (the section's description)"
    assert props["additionalProperties"] is False
    assert set(props["properties"]) == {f.name for f in dataclasses.fields(cls)}
    for name, field in props["properties"].items():
        assert field["description"].strip(), f"{cls.__name__}.{name} needs a comment (its description)"
        assert "default" in field and "type" in field, f"{track}.{section}.{name}"


def test_schema_covers_every_key_the_library_reads():
    for track in TRACKS:
        keys = set(SCHEMA["properties"][track]["properties"])
        assert {k for job in get_track(track).job_keys.values() for k in job} | {"bits"} <= keys, track
        assert all(SCHEMA["properties"][track]["properties"][k].get("description") for k in keys), track
    assert {"seeds", "device", "cpu_kernels", "paper_tables", *TRACKS} == set(SCHEMA["properties"])


def test_track_defaults_and_choices_are_the_tracks():
    props = {t: SCHEMA["properties"][t]["properties"] for t in TRACKS}
    assert props["cls_qat"]["calibration"]["properties"]["samples"]["default"] == 0
    assert props["cls_ptq"]["calibration"]["properties"]["samples"]["default"] == 16
    assert props["sr_ptq"]["dqss"]["properties"]["loss"] == {**props["sr_ptq"]["dqss"]["properties"]["loss"],
                                                             "default": "l1", "enum": ["l1", "mse"]}
    assert "mse_y" not in props["cls_ptq"]["dqss"]["properties"]["objective"]["enum"]
    assert props["cls_ptq"]["quant"]["properties"]["first_last_bits"]["maximum"] == 8


@pytest.mark.parametrize("track, section, cls", _sections(), ids=lambda v: getattr(v, "__name__", v))
def test_schema_defaults_are_the_librarys(track, section, cls):
    """A section built from the schema's defaults is the section the library builds from nothing."""
    props = SCHEMA["properties"][track]["properties"][section]["properties"]
    config_class = get_track(track).config
    ours = build_section(cls, {k: v["default"] for k, v in props.items()}, f"{track}.{section}")
    theirs = build_section(cls, config_class.section_defaults.get(section), f"{track}.{section}")
    assert ours == theirs


@pytest.mark.parametrize("path", CONFIGS)
def test_configs_pass_the_schema_unchanged(path):
    config = yaml.safe_load((ROOT / path).read_text())
    before = copy.deepcopy(config)
    validate(config, str(SCHEMA_PATH), set_default=False)  # as workflow/rules/common.smk calls it
    assert config == before  # nothing filled in: the job settings' hashes see the config as written
    assert config["cpu_kernels"] == "avx2"


def _edit(path: tuple, value) -> dict:
    config = copy.deepcopy(TEST_CONFIG)
    node = config
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value
    return config


@pytest.mark.parametrize("path, value, message", [
    (("cls_ptq", "bits"), [{"w": 9, "a": 4}], "9 is greater than the maximum of 8"),
    (("cls_ptq", "dqss", "frobnicate"), 1, "'frobnicate' was unexpected"),
    (("cls_qat", "qat", "epochs"), 0, "0 is less than the minimum of 1"),
    (("sr_ptq", "dqss", "loss"), "kl", "'kl' is not one of ['l1', 'mse']"),
    (("sr_ptq", "quant", "high_precision_bits"), 1, "1 is less than the minimum of 2"),
    (("cpu_kernels",), "sse4", "'sse4' is not one of ['avx2', 'native']"),
    (("device",), "gpu", "does not match"),
    (("paper_tables", "cls_ptq", "w"), 9, "9 is greater than the maximum of 8"),
    (("paper_tables", "sr_ptq", "metric"), "psnr", "'metric' was unexpected"),
    (("paper_tables", "cls_qat", "method_names"), {"lsq": 1}, "1 is not of type 'string'"),
    (("paper_tables", "imagenet"), {}, "'imagenet' was unexpected"),
])
def test_schema_refuses_bad_values(path, value, message):
    with pytest.raises(WorkflowError) as e:
        validate(_edit(path, value), str(SCHEMA_PATH), set_default=False)
    assert message in str(e.value)


@pytest.mark.parametrize("track", TRACKS)
def test_paper_tables_schema_is_the_layouts(track):
    """paper_tables.<track>: every field of its layout dataclass, described, with the library's defaults."""
    from dqss.report.paper import PAPER_TABLES
    from dqss.tracks import get_track

    cls = PAPER_TABLES[get_track(track).table]
    props = SCHEMA["properties"]["paper_tables"]["properties"][track]["properties"]
    assert set(props) == {f.name for f in dataclasses.fields(cls)} and class_description(cls)
    assert all(p["description"].strip() for p in props.values())
    assert build_section(cls, {k: v["default"] for k, v in props.items()}, f"paper_tables.{track}") == cls()


@pytest.mark.parametrize("path, value, message", [
    (("cls_ptq", "calibration", "bins"), 10, "cls_ptq.calibration.bins must be an integer >= 256, got 10"),
    (("cls_ptq", "quant", "first_last_bits"), 9, "cls_ptq.quant.first_last_bits must be an integer in 2..8 or null"),
    (("cls_ptq", "data", "test_fraction"), 1, "cls_ptq.data.test_fraction must be a number in (0, 1), got 1"),
    (("cls_qat", "qat", "epochs"), 0, "cls_qat.qat.epochs must be an integer >= 1, got 0"),
    (("cls_qat", "dqss", "sampling"), "all", "cls_qat.dqss.sampling: unknown 'all'; valid values are"),
    (("cls_qat", "data", "name"), "cifar10", "cls_qat.data.root must name the directory"),
    (("sr_ptq", "dqss", "lr"), -1, "sr_ptq.dqss.lr must be a number > 0, got -1"),
    (("sr_ptq", "eval", "crop_size"), 4, "sr_ptq.eval.crop_size must be an integer >= 8, got 4"),
    (("sr_ptq", "data", "train"), ["skimage/nothing.png"], "sr_ptq.data: embedded image 'skimage/nothing.png'"),
    (("sr_ptq", "backbones", "edsr_tiny_x2", "train"), {"iterations": 0},
     "sr_ptq.backbones.edsr_tiny_x2.train.iterations must be an integer >= 1, got 0"),
])
def test_library_errors_name_the_full_key(path, value, message):
    with pytest.raises(ValueError) as e:
        track_config(_edit(path, value), path[0])
    assert str(e.value).startswith(message)


@pytest.mark.parametrize("kernels", [None, "avx2", "native"])
def test_cpu_kernels_accepted(kernels):
    config = copy.deepcopy(TEST_CONFIG)
    config.pop("cpu_kernels", None)
    if kernels is not None:
        config["cpu_kernels"] = kernels
    assert check_top_level(config) == [0]


def test_cpu_kernels_refused_by_the_library():
    with pytest.raises(ValueError, match=r"^cpu_kernels: 'sse4' is not one of \['avx2', 'native'\]"):
        check_top_level(_edit(("cpu_kernels",), "sse4"))
