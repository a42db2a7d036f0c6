"""The config's JSON schema, generated from the config dataclasses so that it cannot drift from them.

    python -m dqss.schema --write      (or: python -m dqss.schema > workflow/schemas/config.schema.yaml)

A track's sections that are dataclasses (``data``, ``train``, ``calibration``, ``quant``, ``dqss``, ``qat``,
SR's ``eval``) are read off the track config class's annotations; each field gives its JSON type (from its
annotation), its default (the track's ``section_defaults`` over the dataclass's own), its allowed values
(from :func:`dqss.tracks.config.option`, narrowed by the track's ``section_choices``) and its description (its
comment).  The other keys, of a track and at the top level, are the small fragments below.

Snakemake validates the config against this schema with ``set_default=False``: the defaults are
documentation, the config stays as written (every job's settings hash is computed from it).  The library
then checks everything again, cross-field rules included (:func:`dqss.workflow.track_config`).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing

import yaml

from .options import BIT_MAX, BIT_MIN, EVAL_BATCH_SIZE, SEED_MAX, type_hints, unpack_optional
from .workflow import SCHEMA_PATH

COMMAND = "python -m dqss.schema --write"
HEADER = (f"# Generated from the config dataclasses by dqss/schema.py; do not edit by hand.\n"
          f"# Regenerate: {COMMAND}  (or: python -m dqss.schema > workflow/schemas/config.schema.yaml)\n")
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object", list: "array",
              type(None): "null"}


# -- the dataclass sections ---------------------------------------------------------------------
@functools.cache
def field_comments(cls) -> dict[str, str]:
    """The comment of each field ``cls`` itself declares: the whole-line comments right above it, then the
    comment at its end (``tokenize`` finds the comments, ``ast`` the lines of each field)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {}  # line -> (text, whether the comment is the whole line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), tok.line.lstrip().startswith("#"))
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, line = [], node.lineno - 1
            while line in comments and comments[line][1]:
                above.insert(0, comments[line][0])
                line -= 1
            at_end = [comments[n][0] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            out[node.target.id] = " ".join(above + at_end).replace("``", "")
    return out


def field_description(cls, name: str) -> str:
    """The comment of field ``name`` where it is declared (``cls`` or the base class it inherits it from)."""
    owner = next(c for c in cls.__mro__ if name in c.__dict__.get("__annotations__", {}))
    return field_comments(owner).get(name, "")


def class_description(cls) -> str:
    """The first paragraph of ``cls``'s own docstring, on one line."""
    doc = cls.__dict__.get("__doc__") or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclass() puts where a docstring is missing
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split()).replace("``", "")


def json_type(hint) -> dict:
    """The JSON type of an annotation: ``int`` -> integer, ``X | None`` -> [X, null], ``list[str]`` ->
    array of string, ``dict[str, str]`` -> object of string."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    names = [JSON_TYPES[typing.get_origin(a) or a] for a in args]
    out = {"type": names[0] if len(names) == 1 else names}
    item_types = [typing.get_args(a)[0] for a in args if typing.get_origin(a) is list and typing.get_args(a)]
    if item_types:
        out["items"] = json_type(item_types[0])
    value_types = [typing.get_args(a)[1] for a in args if typing.get_origin(a) is dict and len(typing.get_args(a)) == 2]
    if value_types:
        out["additionalProperties"] = json_type(value_types[0])
    return out


def json_value(value):
    """A default as JSON: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    return value


def field_schema(cls, f: dataclasses.Field, defaults: dict, choices: dict, with_default: bool) -> dict:
    """One field of a section: type, default, allowed values and description."""
    hint = type_hints(cls)[f.name]
    base, optional = unpack_optional(hint)
    out = json_type(hint)
    limits = dict(f.metadata.get("limits", {}))
    if f.name in choices:
        limits["enum"] = list(choices[f.name])
    if "enum" in limits:
        if typing.get_origin(base) is list:
            out["items"]["enum"] = limits["enum"]
        else:
            out["enum"] = limits["enum"] + [None] * optional
    out.update({k: v for k, v in limits.items() if k != "enum"})
    if with_default:
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        out["default"] = json_value(defaults.get(f.name, default))
    out["description"] = field_description(cls, f.name)
    return out


def section_schema(cls, defaults: dict | None = None, choices: dict | None = None,
                   with_defaults: bool = True) -> dict:
    """The schema of a dataclass section: every field, and no other key (``build_section`` refuses them)."""
    return {"type": "object", "additionalProperties": False, "description": class_description(cls),
            "properties": {f.name: field_schema(cls, f, defaults or {}, choices or {}, with_defaults)
                           for f in dataclasses.fields(cls)}}


def dataclass_sections(config_class) -> dict[str, type]:
    """The track's sections that are dataclasses, by key: its config class's fields of a dataclass type."""
    return {name: hint for name, hint in type_hints(config_class).items() if dataclasses.is_dataclass(hint)}


# -- the other keys of a track ----------------------------------------------------------------
def bits_schema() -> dict:
    width = {"type": "integer", "minimum": BIT_MIN, "maximum": BIT_MAX}
    return {"type": "array", "minItems": 1, "uniqueItems": True,
            "description": "the bit widths benchmarked, each once: W (weights) and A (activations) bits",
            "items": {"type": "object", "additionalProperties": False, "required": ["a", "w"],
                      "properties": {"w": {**width, "description": "weight bits"},
                                     "a": {**width, "description": "activation bits"}}}}


def strategies_schema(kind: str) -> dict:
    return {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string"},
            "description": f"the {kind} strategies benchmarked one by one (registered names, each once)"}


def strategy_options_schema() -> dict:
    return {"type": ["object", "null"], "additionalProperties": {"type": "object"},
            "description": "per strategy: the options of its constructor (strategies not listed use their defaults)"}


DATASET = {"type": "string", "pattern": "^[A-Za-z0-9_-]+$",
           "description": "the data set's name in the results' paths and tables"}
CLS_BACKBONES = {
    "type": "object", "minProperties": 1, "description": "timm model name -> how its FP weights are obtained",
    "additionalProperties": {
        "type": ["object", "null"], "additionalProperties": False,
        "properties": {"weights": {"type": "string", "default": "train",
                                   "description": "train (trained here, from train:), timm (timm's pretrained "
                                                  "weights) or the path of a weight file"}}}}
NUM_CLASSES = {"type": ["integer", "null"], "minimum": 2, "default": None,
               "description": "classes of imagefolder data (null: the data's; digits and cifar10: 10)"}
CLS_EVAL = {"type": "object", "additionalProperties": False, "description": "the test-set evaluation",
            "properties": {"batch_size": {"type": "integer", "minimum": 1, "default": EVAL_BATCH_SIZE,
                                          "description": "images per forward pass"}}}

def sr_backbones_schema() -> dict:
    from .tracks.sr_ptq import SRTrainConfig

    weights = {"oneOf": [{"type": "string", "minLength": 1},
                         {"type": "object", "additionalProperties": False, "required": ["sha256", "url"],
                          "properties": {"url": {"type": "string", "description": "where to download the file"},
                                         "sha256": {"type": "string", "pattern": "^[0-9a-fA-F]{8,64}$",
                                                    "description": "the file's SHA-256 (at least its first 8 "
                                                                   "hex digits)"}}}],
               "default": "train", "description": "train (embedded data only), the path of a weight file, or "
                                                  "{url, sha256} downloaded into weights_dir"}
    train = {**section_schema(SRTrainConfig, with_defaults=False),
             "description": "this backbone's overrides of sr_ptq.train"}
    return {"type": "object", "minProperties": 1, "description": "basicsr backbones by name: <preset>_x<scale>",
            "propertyNames": {"pattern": "^[a-z0-9_]+_x[0-9]+$",
                              "description": "<preset>_x<scale>, e.g. edsr_baseline_x2"},
            "additionalProperties": {
                "type": ["object", "null"], "additionalProperties": False,
                "properties": {"weights": weights, "train": train,
                               "param_key": {"type": ["string", "null"], "description": "the checkpoint's entry "
                                             "holding the weights (e.g. params, params_ema)"},
                               "options": {"type": "object",
                                           "description": "basicsr architecture options over the preset's"}}}}


def cls_keys() -> dict[str, dict]:
    """The other keys of a classification track (timm backbones)."""
    return {"backbones": CLS_BACKBONES, "num_classes": NUM_CLASSES, "eval": CLS_EVAL}


def sr_keys() -> dict[str, dict]:
    """The other keys of a super-resolution track (basicsr backbones, downloaded weights)."""
    from .tracks.sr_ptq import WEIGHTS_DIR

    weights_dir = {"type": "string", "default": WEIGHTS_DIR,
                   "description": "where the downloaded pretrained weights ({url, sha256}) are stored"}
    return {"backbones": sr_backbones_schema(), "weights_dir": weights_dir}


# a track's keys that are neither dataclass sections nor TRACK_KEYS, by its family (dqss.tracks.Track.family)
FAMILY_KEYS = {"cls": cls_keys, "sr": sr_keys}


def track_keys(track: str) -> dict[str, dict]:
    """The keys of a track section that are not dataclasses."""
    from .tracks import get_track

    record = get_track(track)
    if record.family not in FAMILY_KEYS:
        raise ValueError(f"track {track}: family '{record.family}' has no schema of its keys; add it to "
                         f"dqss.schema.FAMILY_KEYS (known: {list(FAMILY_KEYS)})")
    common = {"dataset": DATASET, "bits": bits_schema(), "strategy_options": strategy_options_schema(),
              "strategies": strategies_schema(record.config.kind.upper())}
    return {**common, **FAMILY_KEYS[record.family]()}


def required_keys() -> list[str]:
    """The keys every track section must have: the required ones of TRACK_KEYS (Section.get(..., required=True))."""
    from .tracks.config import TRACK_KEYS

    return sorted(name for name, (_, required) in TRACK_KEYS.items() if required)


def track_schema(track: str) -> dict:
    from .tracks import get_track

    record = get_track(track)
    config_class = record.config
    sections = {name: section_schema(cls, config_class.section_defaults.get(name),
                                     config_class.section_choices.get(name))
                for name, cls in dataclass_sections(config_class).items()}
    return {"type": "object", "additionalProperties": False, "required": required_keys(),
            "description": record.description, "properties": {**track_keys(track), **sections}}


def paper_tables_schema() -> dict:
    """``paper_tables:``: a layout dataclass per track (dqss.report.paper); null or left out = its defaults."""
    from .report.paper import PAPER_TABLES, PAPER_TABLES_DESCRIPTION
    from .tracks import tracks

    return {"type": ["object", "null"], "additionalProperties": False, "description": PAPER_TABLES_DESCRIPTION,
            "properties": {t.name: {**section_schema(PAPER_TABLES[t.table]), "type": ["object", "null"]}
                           for t in tracks()}}


# -- the whole config -----------------------------------------------------------------------
CPU_KERNELS_DESCRIPTION = (
    "CPU kernel dispatch of every job: avx2 pins ATen, oneDNN and MKL to AVX2 so that CPU results are identical on "
    "every x86-64 CPU with AVX2; native lets each library use the CPU's widest instruction set (faster, results "
    "depend on the CPU)")


def config_schema() -> dict:
    from .workflow import CPU_KERNELS, DEVICES, track_names

    names = track_names()

    top = {
        "seeds": {"type": "array", "minItems": 1, "uniqueItems": True,
                  "items": {"type": "integer", "minimum": 0, "maximum": SEED_MAX},
                  "description": "calibration draw and search seeds, distinct, in 0..2**32-1 (a repeated seed "
                                 "would count twice in every mean and std)"},
        "device": {"type": "string", "pattern": DEVICES.pattern, "default": "auto",
                   "description": "where the jobs run: auto (CUDA when present, else CPU), cpu, cuda or cuda:<index>"},
        "cpu_kernels": {"type": "string", "enum": list(CPU_KERNELS), "default": CPU_KERNELS[0],
                        "description": CPU_KERNELS_DESCRIPTION},
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": f"DQSS benchmark suite configuration (generated from the config dataclasses: {COMMAND}; "
                           "the library checks the values again)",
            "type": "object", "additionalProperties": False, "required": ["seeds"],
            "anyOf": [{"required": [t]} for t in names],
            "properties": {**top, **{t: track_schema(t) for t in names}, "paper_tables": paper_tables_schema()}}


class _Dumper(yaml.SafeDumper):
    """YAML without anchors: a fragment used twice is written out twice."""

    def ignore_aliases(self, data) -> bool:
        return True


def render() -> str:
    """The schema file's text: the header, then the schema with every mapping's keys sorted."""
    body = yaml.dump(config_schema(), Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=110,
                     allow_unicode=True)
    return HEADER + body


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dqss.schema", description="Print the config's JSON schema "
                                 f"(generated from the config dataclasses), or write it to {SCHEMA_PATH}.")
    ap.add_argument("--write", action="store_true", help="write the schema file instead of printing it")
    args = ap.parse_args(argv)
    text = render()
    if args.write:
        SCHEMA_PATH.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
