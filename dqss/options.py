"""Leaf helpers for every config dataclass: declared limits (:func:`option`), their check, and the bit and seed limits.

A config dataclass declares each field's allowed values once with :func:`option`; :func:`check_options`
enforces them (its messages name the field), :func:`build_section` builds the dataclass from a config section
and puts the section's key in front of a message, and :mod:`dqss.schema` writes the same limits into the
config's JSON schema.  This module imports nothing from the package: the quantizer core, the algorithms and the
report read it, and the tracks' configs (:mod:`dqss.tracks.config`) are built on it.
"""
from __future__ import annotations

import functools
import operator
import re
import types
import typing
from dataclasses import MISSING, field, fields

SEED_MAX = 2 ** 32 - 1  # numpy's RandomState (the digits split) takes seeds below 2**32
BIT_MIN, BIT_MAX = 2, 8  # the weight and activation bit widths the quantizers support
EVAL_BATCH_SIZE = 256  # a classification track's eval.batch_size when the config leaves it out
# option()'s keywords -> the JSON-schema keywords they are written as (dqss.schema)
LIMITS = {"choices": "enum", "ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum",
          "min_items": "minItems"}


def build_section(cls, section: dict | None, key: str):
    """The dataclass ``cls`` from a config section, refusing unknown options by name.  The dataclasses name
    a field relative to their section ("lr must be > 0"); their messages get the section's full ``key``."""
    section = dict(section or {})
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(section) - valid)
    if unknown:
        raise ValueError(f"{key}: unknown option(s) {unknown}; valid options are {sorted(valid)}")
    try:
        return cls(**section)
    except ValueError as exc:
        msg = str(exc)
        head = re.match(r"\w+", msg)
        raise ValueError(f"{key}.{msg}" if head and head.group() in valid else f"{key}: {msg}") from exc


def option(default=MISSING, *, factory=MISSING, choices=None, ge=None, gt=None, le=None, lt=None,
           min_items=None):
    """A dataclass field with its allowed values declared once: :func:`check_options` enforces them and
    :mod:`dqss.schema` writes them into the config's JSON schema (``choices`` of a list: of its items)."""
    declared = dict(choices=choices, ge=ge, gt=gt, le=le, lt=lt, min_items=min_items)
    limits = {LIMITS[k]: (list(v) if k == "choices" else v) for k, v in declared.items() if v is not None}
    return field(default=default, default_factory=factory, metadata={"limits": limits})


@functools.cache
def type_hints(cls) -> dict:
    """``cls``'s evaluated annotations (the modules use ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


def unpack_optional(hint) -> tuple[object, bool]:
    """``(X, True)`` for ``X | None``, else ``(hint, False)``."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    rest = [a for a in args if a is not type(None)]
    if len(rest) == 1 and len(args) == 2:
        return rest[0], True
    return hint, False


def check_options(obj) -> None:
    """Every field of the dataclass ``obj`` of its annotated type (int, float, bool and lists; others are
    free) and within the limits its :func:`option` declares.  Messages name the field: :func:`build_section`
    puts the section's key in front."""
    for f in fields(obj):
        base, optional = unpack_optional(type_hints(type(obj))[f.name])
        value, limits = getattr(obj, f.name), f.metadata.get("limits", {})
        if value is None and optional:
            continue
        problem = check_value(value, base, limits)
        if problem:
            raise ValueError(f"{f.name}{problem}{' or null' if optional else ''}, got {value!r}")


def check_value(value, base, limits: dict) -> str | None:
    """What is wrong with ``value`` as a ``base`` within ``limits`` (the message's tail), or None."""
    choices = limits.get("enum")
    if typing.get_origin(base) is list:
        if not isinstance(value, (list, tuple)):
            return " must be a list"
        bad = [v for v in value if choices is not None and v not in choices]
        if bad:
            return f": unknown {bad}; valid values are {choices}"
        if len(value) < limits.get("minItems", 0):
            return f" must list at least {limits['minItems']} of {choices}"
    elif choices is not None and value not in choices:
        return f": unknown {value!r}; valid values are {choices}"
    elif base in (int, float, bool) and not (_of_type(value, base) and _within(value, limits)):
        return f" must be {describe(base, limits)}"
    return None


def _of_type(value, base) -> bool:
    """bool only for bool; an int for int; an int or a float for float."""
    if isinstance(value, bool) or base is bool:
        return isinstance(value, bool) and base is bool
    return isinstance(value, int) or (base is float and isinstance(value, float))


def _within(value, limits: dict) -> bool:
    checks = {"minimum": operator.ge, "maximum": operator.le, "exclusiveMinimum": operator.gt,
              "exclusiveMaximum": operator.lt}
    return all(check(value, limits[k]) for k, check in checks.items() if k in limits)


def describe(base, limits: dict) -> str:
    """A ``base`` within ``limits`` in words: 'an integer in 1..20', 'a number in (0, 1]', 'a number > 0'."""
    kind = {int: "an integer", float: "a number", bool: "true or false"}[base]
    lo = limits.get("minimum", limits.get("exclusiveMinimum"))
    hi = limits.get("maximum", limits.get("exclusiveMaximum"))
    closed_lo, closed_hi = "minimum" in limits, "maximum" in limits
    if lo is not None and hi is not None:
        if base is int and closed_lo and closed_hi:
            return f"{kind} in {lo}..{hi}"
        return f"{kind} in {'[' if closed_lo else '('}{lo}, {hi}{']' if closed_hi else ')'}"
    if lo is not None:
        return f"{kind} {'>=' if closed_lo else '>'} {lo}"
    if hi is not None:
        return f"{kind} {'<=' if closed_hi else '<'} {hi}"
    return kind


def check_distinct(names, key: str, what: str) -> None:
    """Each of ``names`` once (a name listed twice would run, and count, twice)."""
    dup = sorted({s for s in names if list(names).count(s) > 1})
    if dup:
        raise ValueError(f"{key}: {dup} listed more than once; list each {what} once")


def check_annealing(section, key: str) -> None:
    """A search's softmax temperature anneals from ``tau_start`` down to ``tau_end`` (equal: constant); rising, it
    would flatten the mixture just as the search should settle on one strategy per layer."""
    start, end = section.tau_start, section.tau_end
    if start < end:
        raise ValueError(f"{key + '.' if key else ''}tau_start={start} is below tau_end={end}: the temperature would rise {end / start:g}x "
                         "over the search instead of annealing; set tau_start >= tau_end (equal: a constant "
                         "temperature)")


def check_seed(seed, key: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{key} must be an integer in 0..{SEED_MAX} (2**32 - 1), got {seed!r}")
    return seed
