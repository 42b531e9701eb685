"""Bake-off: the same data and settings trained on several backbones, as queued jobs.

A bake-off is a list of run names kept in `<runs root>/.bakeoffs/<id>.json`
(a dot-folder: never listed as a run). Its table is the runs' summaries, so it
fills in as the job queue works through them.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from pathlib import Path

from engine import backbones, jobs, runs
from engine.config import TrainConfig
from engine.training.fit import TrainingError

FOLDER = ".bakeoffs"


def usable() -> list[str]:
    """Backbones that can train here now: pretrained ones whose weights load (no download needed)."""
    out = []
    for spec in backbones.all_specs():
        if spec.source == "scratch":
            continue
        ok, _ = backbones.availability(spec, paths=False)
        if ok:
            out.append(spec.name)
    return out


def _folder(root: Path | None = None) -> Path:
    return (root or runs.runs_root()) / FOLDER


def start(config: TrainConfig, names: list[str], registry=None) -> dict:
    """Queue one training job of `config` per backbone in `names`; returns the bake-off's record.

    Raises:
        TrainingError: fewer than two backbones, an unknown one, or one that cannot load here.
    """
    names = list(dict.fromkeys(names))  # each once, in the order given
    if len(names) < 2:
        raise TrainingError(f"a bake-off compares at least two backbones; got {len(names)}")
    if config.mode not in ("feature", "scratch"):
        raise TrainingError(f"a bake-off trains new runs (feature or scratch mode), not {config.mode!r}")
    for name in names:
        spec = backbones.get_spec(name)  # unknown names: a clear error listing the known ones
        ok, reason = backbones.availability(spec, paths=False)
        if not ok:
            raise TrainingError(f"{name} cannot train here: {reason}")
    registry = registry or jobs.registry()
    record = {
        "id": f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}",
        "created": time.time(),
        "backbones": names,
        "config": config.to_json(),
        "runs": [],
    }
    for name in names:
        mode = "scratch" if backbones.get_spec(name).source == "scratch" else "feature"
        job = registry.submit(replace(config, backbone=name, mode=mode))
        record["runs"].append(job.id)
    runs.write_json(_folder() / f"{record['id']}.json", record)
    return record


def load(bakeoff_id: str, root: Path | None = None) -> dict:
    path = _folder(root) / f"{bakeoff_id}.json"
    record = runs.read_json(path, None)
    if record is None:
        raise runs.RunError(f"no bake-off {bakeoff_id!r}")
    return record


def list_bakeoffs(root: Path | None = None) -> list[dict]:
    """Every bake-off, newest first."""
    folder = _folder(root)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob("*.json"):
        try:
            found.append(runs.read_json(path))
        except runs.RunError:
            continue  # a damaged record hides itself, not the others
    return sorted(found, key=lambda r: r.get("created", 0), reverse=True)


def table(record: dict, root: Path | None = None) -> list[dict]:
    """The bake-off's runs as runs.summary rows (deleted runs left out), in the order they were queued."""
    rows = []
    for name, backbone in zip(record["runs"], record["backbones"], strict=True):
        try:
            row = runs.summary(runs.open_run(name, root, allow_path=False))
        except runs.RunError:
            continue
        # A queued run has no config yet: the record knows its backbone and settings.
        row["backbone"] = row["backbone"] or backbone
        row["image_size"] = row["image_size"] or record["config"]["data"]["image_size"]
        rows.append(row)
    return rows
