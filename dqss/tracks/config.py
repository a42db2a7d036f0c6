"""Config plumbing shared by every track: sections, validation helpers and partial configs.

A track's config class is built from its config section in one of two ways:

* **whole** (``partial=False``): the workflow validates the full section before any job runs;
* **partial** (``partial=True``): a job builds its config from the *settings* its rule passes as
  ``params`` -- only the keys that job reads (:func:`dqss.workflow.job_settings`).  A key it was not
  given becomes :class:`NotGiven`, whose use is an error, so a job can never read a setting that an
  edit would not rerun it for.
"""
from __future__ import annotations

import typing
from dataclasses import MISSING, dataclass, field, fields

from ..options import (BIT_MAX, BIT_MIN, EVAL_BATCH_SIZE, build_section, check_annealing, check_distinct,
                      check_seed, type_hints)
from ..results import DQSS_ARGMAX, DQSS_RECON, FP_METHOD, PTQ_DQSS_METHODS, REFERENCE_METHODS, is_dqss


class NotGiven:
    """A config key a job was not given: any use of it fails, naming the key and the fix."""

    def __init__(self, key: str):
        object.__setattr__(self, "_key", key)

    def _fail(self, *_args, **_kwargs):
        raise KeyError(f"{self._key} is not among this job's settings: add the key to the job's entry in its "
                       "track's job_keys (TRACK in dqss/tracks/<track>.py) so that the rule passes it (and reruns "
                       "when it changes)")

    def __getattr__(self, name):
        if name.startswith("__"):  # copy, pickle and friends probe for optional hooks
            raise AttributeError(name)
        self._fail()

    __getitem__ = __iter__ = __len__ = __contains__ = __bool__ = __call__ = _fail

    def __repr__(self) -> str:
        return f"NotGiven({self._key!r})"


class Section:
    """Reads the keys of a track's config section ``d`` (named ``key`` in messages)."""

    def __init__(self, d: dict, key: str, partial: bool = False):
        self.d, self.key, self.partial = dict(d or {}), key, partial

    def get(self, name: str, parse=lambda v: v, required: bool = False):
        """``parse(value)`` of ``name`` (``None`` when absent), or :class:`NotGiven` in a partial config."""
        if name not in self.d:
            if self.partial:
                return NotGiven(f"{self.key}.{name}")
            if required:
                raise ValueError(f"{self.key}.{name} is required")
        return parse(self.d.get(name))

    def build(self, name: str, cls, defaults: dict | None = None):
        """The dataclass ``cls`` of sub-section ``name`` (``defaults`` under the user's values)."""
        return self.get(name, lambda v: build_section(cls, {**(defaults or {}), **(v or {})},
                                                       f"{self.key}.{name}"))


def given(*values) -> bool:
    """Whether none of ``values`` is :class:`NotGiven` (cross-checks run only on what a job was given)."""
    return not any(isinstance(v, NotGiven) for v in values)


def check_names(names, key: str, kind: str) -> list[str]:
    """``names`` if every one is a registered strategy of ``kind``, else a ValueError listing them."""
    from ..core.strategy import strategy_names

    known = strategy_names(kind)
    bad = [s for s in names if s not in known]
    if bad:
        raise ValueError(f"{key}: unknown {bad}; registered {kind.upper()} strategies are {known}")
    check_distinct(names, key, "strategy")
    return list(names)


def check_candidates(names, key: str, kind: str) -> list[str]:
    """DQSS's candidates: registered, distinct, and at least two (one candidate leaves nothing to search)."""
    names = check_names(names, key, kind)
    if len(names) < 2:
        raise ValueError(f"{key}: DQSS needs at least two candidate strategies, got {names}; list two or more "
                         "in dqss.candidates (or in strategies, which null candidates stand for)")
    return names


def parse_options(opts: dict | None, key: str, kind: str) -> dict[str, dict]:
    """``strategy_options`` (``key``: its full key): each strategy registered and its options valid, before any
    work."""
    from ..core.strategy import get_strategy

    opts = dict(opts or {})
    check_names(list(opts), key, kind)
    for name, o in opts.items():
        try:
            get_strategy(name, o)
        except ValueError as exc:
            raise ValueError(f"{key}.{name}: {exc}") from exc
    return opts


def parse_bits(bits, key: str) -> list[tuple[int, int]]:
    """``bits`` (``key``: its full key): a list of distinct ``{w, a}`` with both widths in BIT_MIN..BIT_MAX."""
    out = []
    for b in bits or []:
        w, a = int(b["w"]), int(b["a"])
        if not (BIT_MIN <= w <= BIT_MAX and BIT_MIN <= a <= BIT_MAX):
            raise ValueError(f"{key}: W{w}A{a} is out of range; bit widths must lie in {BIT_MIN}..{BIT_MAX}")
        if (w, a) in out:
            raise ValueError(f"{key}: W{w}A{a} is listed twice; list each bit width once")
        out.append((w, a))
    if not out:
        raise ValueError(f"{key} must list at least one {{w: ..., a: ...}}")
    return out


def parse_seeds(seeds, key: str = "seeds") -> list[int]:
    """The top-level ``seeds``: distinct integers in 0..2**32-1 (a repeated seed would count twice)."""
    if not isinstance(seeds, list) or not seeds:
        raise ValueError(f"{key} must be a non-empty list of integers, e.g. [0, 1]")
    out = [check_seed(s, f"{key}[{i}]") for i, s in enumerate(seeds)]
    dup = sorted({s for s in out if out.count(s) > 1})
    if dup:
        raise ValueError(f"{key}: {dup} listed more than once; each seed must be distinct (a repeated seed "
                         "would count the same run twice in every mean and std)")
    return out


def parse_backbones(v) -> dict[str, dict]:
    return {k: dict(spec or {}) for k, spec in (v or {}).items()}


def eval_batch_size(v) -> int:
    return int((v or {}).get("batch_size", EVAL_BATCH_SIZE))


def track_key(parse, *, required: bool = False, key: str | None = None, default=MISSING):
    """A track-section field that is not a section dataclass: ``parse(value, full key, kind)`` of the config key
    ``key`` (default: the field's name)."""
    return field(default=default, metadata={"parse": parse, "required": required, "key": key})


# the keys every track section reads the same way: field name -> (parse(value, full key, kind), required)
TRACK_KEYS = {
    "dataset": (lambda v, key, kind: v, True),
    "backbones": (lambda v, key, kind: parse_backbones(v), True),
    "bits": (lambda v, key, kind: parse_bits(v, key), True),
    "strategies": (check_names, True),
    "strategy_options": (parse_options, False),
}


@dataclass(kw_only=True)
class TrackConfig:
    """The base of the track configs: the keys every track has, and one :meth:`from_dict` for every track.

    A track adds its sections as fields whose type is a dataclass, built by :func:`build_section` (with the
    track's ``section_defaults`` over the dataclass's own), and any other key with :func:`track_key`; the
    keys of :data:`TRACK_KEYS` are read the same way in every track.  :meth:`check` holds the cross-field
    rules."""

    dataset: str
    backbones: dict[str, dict]
    bits: list[tuple[int, int]]
    strategies: list[str]
    strategy_options: dict[str, dict]
    raw: dict = field(default_factory=dict)  # the section as given (a job's settings hash is computed from it)

    task: typing.ClassVar[str]
    kind: typing.ClassVar[str] = "ptq"  # the registry kind of the track's strategies
    # per section: this track's defaults over the dataclass's own, the values a field is narrowed to, and why
    # (read by from_dict and by dqss.schema)
    section_defaults: typing.ClassVar[dict[str, dict]] = {}
    section_choices: typing.ClassVar[dict[str, dict[str, tuple]]] = {}
    choice_reasons: typing.ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls, d: dict, key: str | None = None, partial: bool = False):
        """The track config from its section ``d``; ``partial``: from a job's settings (see the module's doc)."""
        key = key or cls.task
        s = Section(d, key, partial)
        hints = type_hints(cls)
        values = {}
        for f in fields(cls):
            if f.name == "raw":
                continue
            name = f.metadata.get("key") or f.name
            parse, required = TRACK_KEYS.get(f.name, (f.metadata.get("parse"), f.metadata.get("required", False)))
            if parse is None:
                values[f.name] = s.build(name, hints[f.name], cls.section_defaults.get(name))
            else:
                values[f.name] = s.get(name, lambda v, p=parse, k=f"{key}.{name}": p(v, k, cls.kind), required)
        cfg = cls(**values, raw=dict(s.d))
        cfg.check(key)
        return cfg

    def check(self, key: str) -> None:
        """The cross-field rules of every track: DQSS's candidates (null = the track's strategies) and the
        section values this track narrows; a track adds its own by overriding (and calling this)."""
        dq = getattr(self, "dqss", None)
        if dq is not None and given(dq):
            if dq.candidates is not None and not dq.candidates:  # [] meaning "all" would surprise a reader
                raise ValueError(f"{key}.dqss.candidates: [] lists no strategy; omit the key (or write null) to "
                                 "search over all of the track's strategies")
            dq.candidates = check_candidates(dq.candidates or self.strategies, f"{key}.dqss.candidates", self.kind)
            check_annealing(dq, f"{key}.dqss")
        rec = getattr(self, "reconstruction", None)
        if rec is not None and given(rec):
            check_distinct(rec.methods, f"{key}.reconstruction.methods", "method")
            rec.check(f"{key}.reconstruction", self.strategies if given(self.strategies) else [])
        for section, narrowed in self.section_choices.items():
            sec = getattr(self, section)
            if not given(sec):
                continue
            for name, allowed in narrowed.items():
                value = getattr(sec, name)
                if value is not None and value not in allowed:
                    why = self.choice_reasons.get(f"{section}.{name}", "is not available in this track")
                    raise ValueError(f"{key}.{section}.{name}: '{value}' {why}; valid values are {list(allowed)}")

    def strategy(self, name: str):
        from ..core.strategy import get_strategy

        return get_strategy(name, self.strategy_options.get(name))

    def weights(self, backbone: str) -> str:
        return str(self.backbones[backbone].get("weights", "train"))

    def weight_source(self, backbone: str) -> str:
        """Where ``backbone``'s FP weights come from: 'train' (the workflow trains it), 'timm' or 'file'; a track
        that downloads them adds 'url'."""
        weights = self.weights(backbone)
        return weights if weights in ("train", "timm") else "file"

    def weight_file(self, backbone: str) -> str | None:
        """The local weight file ``backbone`` loads (an input of its jobs: replacing it reruns them), or None."""
        return self.weights(backbone) if self.weight_source(backbone) == "file" else None

    def check_inputs(self, trainable: tuple[str, ...]) -> None:
        """What the workflow checks before any job beyond the section's values: the data folders and weight files
        the config names (``trainable``: the data sets its backbones may be trained on).  A track overrides it."""

    def setting(self, key: str):
        """The value of section key ``key`` a job is given (dqss.workflow.job_settings); a track whose job reads a
        key resolved (not as written) overrides it."""
        return self.raw.get(key)

    def methods(self) -> list[str]:
        """The methods of its result rows at every bit width and seed (the workflow's targets)."""
        return self.strategies + list(PTQ_DQSS_METHODS)

    def reference_methods(self) -> list[str]:
        """The methods of its unquantized rows (one per backbone)."""
        return [FP_METHOD]

    def row_settings(self, backbone: str, method: str) -> dict:
        """The settings that define one result row (columns of metrics.csv, :data:`dqss.results.SETTINGS`): those of
        every track here; a track adds its own by overriding (and calling this)."""
        weights = self.weights(backbone)
        out = {"weights": weights if weights in ("train", "timm", "url") else "file"}
        if method in REFERENCE_METHODS:
            return out
        out["calib_size"] = self.calibration.size
        return out

    def dqss_row_settings(self, method: str, reconstruction=None) -> dict:
        """The settings of a DQSS row every track shares: candidates (with the reconstruction methods for
        dqss_recon), the selection and its sweeps."""
        d = self.dqss
        select = "argmax" if method == DQSS_ARGMAX else d.select
        out = {"candidates": d.candidates + (reconstruction.methods if method == DQSS_RECON and reconstruction else []),
               "select": select}
        if select == "measured":
            out.update(sweeps=d.sweeps, hold_fraction=self.calibration.hold_fraction)
        return out


@dataclass(kw_only=True)
class PTQTrackConfig(TrackConfig):
    """The row settings of a post-training quantization track: the reconstruction baselines' iterations and the
    DQSS search's (a PTQ track has ``dqss:`` a :class:`dqss.algorithms.search.SearchConfig`, and may have
    ``reconstruction:``)."""

    def row_settings(self, backbone: str, method: str) -> dict:
        out = super().row_settings(backbone, method)
        if method in REFERENCE_METHODS:
            return out
        out.update(self.quant_row_settings())
        rec = getattr(self, "reconstruction", None)
        rec = rec if rec is not None and given(rec) else None  # a job not given the section is not one of its rows
        if rec is not None and method in rec.methods:
            out["recon_iterations"] = rec.iterations
        if is_dqss(method):
            out.update(self.dqss_row_settings(method, rec), iterations=self.dqss.iterations, loss=self.dqss.loss)
        return out

    def quant_row_settings(self) -> dict:
        """The ``quant:`` settings of a row (classification: first_last_bits)."""
        return {"first_last_bits": self.quant.first_last_bits}
