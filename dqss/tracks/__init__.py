"""The tracks: the workflow's jobs of each benchmark setting, and their registry.

A track is one module of this package that registers a :class:`Track` record (``TRACK = register_track(Track(...))``):
its name (the config section and ``results/<name>/``), its config class, the section keys each of its jobs reads,
and what the workflow, the schema and the report need to know of it.  :func:`tracks` finds the track modules by
importing every module of this folder (like ``baselines/`` finds strategies), so that adding a track is its module,
its rules file ``workflow/rules/<name>.smk`` and its config section -- nothing else.

The registry is filled on first use (:func:`tracks`, :func:`get_track`), not when this package is imported: the
track modules import torch and this package's own modules.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass

TABLE_KINDS = ("cls", "sr")  # the report's kinds of table (dqss.report.paper)


@dataclass(frozen=True)
class Track:
    """One track of the benchmark, as the workflow, the schema and the report see it."""

    name: str  # the config section, the results' task, the rules file workflow/rules/<name>.smk
    config: type  # its dqss.tracks.config.TrackConfig subclass
    # job -> the keys of the section the job reads (dqss.workflow.job_settings passes exactly these)
    job_keys: Mapping[str, tuple[str, ...]]
    description: str  # the schema's description of the section
    table: str = "cls"  # the kind of report table: cls (rows = methods) or sr (row groups = backbones)
    family: str = "cls"  # the adapter whose backbones and data it runs (dqss.cls or dqss.sr): the schema of its keys
    trainable: tuple[str, ...] = ()  # the data sets the workflow may train the FP backbone on (weights: train)
    deploy: bool = False  # has the deployment check (deploy_check; its section has deploy:)
    jobs_per_method: bool = False  # a uniform job runs one method (QAT), not every strategy at once (PTQ)

    def __post_init__(self):
        if self.table not in TABLE_KINDS:
            raise ValueError(f"track {self.name}: table '{self.table}' is not one of {list(TABLE_KINDS)}")
        if getattr(self.config, "task", None) != self.name:
            raise ValueError(f"track {self.name}: its config class {self.config.__name__} has task "
                             f"{getattr(self.config, 'task', None)!r}; set task: ClassVar[str] = {self.name!r}")

    @property
    def rules(self) -> str:
        """Its rules file, from the repository root (the Snakefile includes it when the config has the section)."""
        return f"workflow/rules/{self.name}.smk"


_REGISTRY: dict[str, Track] = {}
_discovered = False


def register_track(track: Track) -> Track:
    """Add ``track`` to the registry (a track module calls this once, at import); a taken name is refused."""
    if track.name in _REGISTRY:
        raise ValueError(f"track '{track.name}' is already registered (by {_REGISTRY[track.name].config.__module__}); "
                         "give the new track another name")
    _REGISTRY[track.name] = track
    return track


def unregister_track(name: str) -> None:
    """Remove a registered track (tests that register a track of their own)."""
    _REGISTRY.pop(name, None)


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def tracks() -> tuple[Track, ...]:
    """Every registered track, sorted by name (cls_ptq, cls_qat, sr_ptq)."""
    _discover()
    return tuple(_REGISTRY[n] for n in sorted(_REGISTRY))


def track_names() -> list[str]:
    return [t.name for t in tracks()]


def get_track(name: str) -> Track:
    """The registered track ``name``; an unknown name is an error naming the registered ones."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown track '{name}'; registered tracks are {track_names()}")
    return _REGISTRY[name]
