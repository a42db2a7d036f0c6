"""The track registry (dqss.tracks): the three tracks in order, each record consistent with its config class, a
taken name refused, and a track registered from outside (here: a toy fourth track) reaching every consumer that
derives from the registry in-process (the workflow's checks and job settings, the schema)."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from dqss import schema, workflow
from dqss.results import SETTINGS
from dqss.tracks import Track, get_track, register_track, track_names, tracks, unregister_track
from dqss.tracks.cls_ptq import ClsPTQConfig

ROOT = Path(__file__).resolve().parents[2]
TEST_CONFIG = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
TOY = "zz_toy"  # sorts after the real tracks


def section_keys(config_class) -> set[str]:
    """The keys of a track's config section: its config class's fields, under their config keys."""
    return {f.metadata.get("key") or f.name for f in dataclasses.fields(config_class) if f.name != "raw"}


def test_registry_lists_the_three_tracks_in_order():
    assert track_names() == ["cls_ptq", "cls_qat", "sr_ptq"]
    assert [t.table for t in tracks()] == ["cls", "cls", "sr"]
    assert [t.deploy for t in tracks()] == [True, False, True]
    assert workflow.TRACKS == ("cls_ptq", "cls_qat", "sr_ptq")
    assert workflow.TRAINABLE == {"cls_ptq": ("digits",), "cls_qat": ("digits", "cifar10")}
    for t in tracks():
        assert t.config.task == t.name and (ROOT / t.rules).is_file(), t.name


@pytest.mark.parametrize("track", track_names())
def test_job_keys_name_keys_of_the_section(track):
    record = get_track(track)
    keys = section_keys(record.config)
    for job, job_keys in record.job_keys.items():
        assert set(job_keys) <= keys, (track, job, set(job_keys) - keys)
    assert ("deploy" in keys) == record.deploy


def test_unknown_and_duplicate_tracks_are_refused():
    with pytest.raises(ValueError, match=r"unknown track 'cls_ptx'; registered tracks are \['cls_ptq', 'cls_qat', "
                                         r"'sr_ptq'\]"):
        get_track("cls_ptx")
    with pytest.raises(ValueError, match="track 'cls_ptq' is already registered"):
        register_track(dataclasses.replace(get_track("cls_ptq")))
    assert track_names() == ["cls_ptq", "cls_qat", "sr_ptq"]


def test_reconstruction_has_its_own_settings_column():
    assert "recon_iterations" in SETTINGS and "reconstruction" not in SETTINGS["iterations"].lower()
    cfg = ClsPTQConfig.from_dict(copy.deepcopy(TEST_CONFIG["cls_ptq"]))
    bb = next(iter(cfg.backbones))
    cfg.reconstruction.methods = ["adaround"]
    row = cfg.row_settings(bb, "adaround")
    assert row["recon_iterations"] == cfg.reconstruction.iterations and "iterations" not in row
    assert cfg.row_settings(bb, "dqss")["iterations"] == cfg.dqss.iterations


@dataclasses.dataclass(kw_only=True)
class ToyConfig(ClsPTQConfig):
    """A fourth track for the test: classification PTQ under another name."""

    task: ClassVar[str] = TOY


@pytest.fixture
def toy():
    record = register_track(Track(
        name=TOY, config=ToyConfig, description="a toy track (the registry's test)", trainable=("digits",),
        job_keys={"train": ("backbones", "data", "num_classes", "train"),
                  "uniform": ("backbones", "data", "num_classes", "dataset", "eval", "quant", "calibration",
                              "strategies", "strategy_options")}))
    try:
        yield record
    finally:
        unregister_track(TOY)
    assert TOY not in track_names()


def test_a_registered_track_reaches_the_consumers(toy):
    assert track_names() == ["cls_ptq", "cls_qat", "sr_ptq", TOY]
    assert workflow.TRACKS[-1] == TOY and workflow.JOB_KEYS[TOY] == dict(toy.job_keys)
    # the schema has its section, described and required like every track's
    generated = schema.config_schema()
    section = generated["properties"][TOY]
    assert section["description"] == toy.description and section["required"] == schema.required_keys()
    assert {"required": [TOY]} in generated["anyOf"]
    assert section_keys(ToyConfig) <= set(section["properties"])
    # the workflow checks a config with only that track, and gives its jobs their settings
    config = {"seeds": [0], TOY: copy.deepcopy(TEST_CONFIG["cls_ptq"])}
    workflow.require_a_track(config)
    cfg = workflow.track_config(config, TOY)
    assert isinstance(cfg, ToyConfig)
    bb = next(iter(cfg.backbones))
    settings = workflow.job_settings(cfg, "uniform", bb)
    assert set(settings) == set(toy.job_keys["uniform"]) and list(settings["backbones"]) == [bb]
    assert workflow.track_job("sr_ptq", "uniform").__module__ == "dqss.tracks.sr_ptq"  # its config class's module
    with pytest.raises(ValueError, match=f"track {TOY} has no job 'dqss'"):
        workflow.job_settings(cfg, "dqss", bb)
