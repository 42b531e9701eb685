"""RELIABILITY 27, scaled to a test: training runs and sessions opened and closed; memory levels off.

bench/soak.py is the soak itself (30 runs through the job registry's worker processes and 20
sessions of a live server); this CI-sized one (12 runs, 10 sessions) runs the engine path the
worker and the CLI run (fit.train) and the pages (AppTest) in one process and reads its RSS.
"""

import gc
import os
import time

import numpy as np
import pytest

from conftest import TINY


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def levels_off(samples: list[float], warm_up: int) -> tuple[float, float]:
    """(growth over the first half after warm-up, growth over the second half), in MB.

    Each half's growth is the median of its second half of samples minus the median of its first: one
    sample the allocator happens to take high (+55 MB in a 4.7 GB process, seen once in CI) moves a
    median by little, while a leak moves every sample after it.
    """
    rest = samples[warm_up:]
    mid = len(rest) // 2

    def growth(part: list[float]) -> float:
        half = len(part) // 2
        return float(np.median(part[half:]) - np.median(part[:half]))

    return growth(rest[: mid + 1]), growth(rest[mid:])


@pytest.mark.slow
def test_runs_and_sessions_level_off(tmp_path, monkeypatch, open_page):
    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.training import fit

    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    config = TrainConfig(data=DataConfig(source=TINY, image_size=64), epochs=1)
    samples, t0 = [], time.monotonic()
    for _ in range(12):
        out = fit.train(config, runs.create(backbone=config.backbone, mode=config.mode))
        assert out["status"] == "finished", out["reason"]
        gc.collect()
        samples.append(rss_mb())
    first, second = levels_off(samples, warm_up=4)
    print(f"runs: {len(samples)} in {time.monotonic() - t0:.0f} s, RSS {samples[0]:.0f} -> {samples[-1]:.0f} MB")
    assert second <= max(40.0, 0.5 * first + 20), f"memory still climbing over the last runs: {samples}"

    sessions = []
    for _ in range(10):
        at = open_page("pages/train.py")
        assert not at.exception
        del at
        gc.collect()
        sessions.append(rss_mb())
    first, second = levels_off(sessions, warm_up=4)
    print(f"sessions: RSS {sessions[0]:.0f} -> {sessions[-1]:.0f} MB")
    assert second <= max(40.0, 0.5 * first + 20), f"memory still climbing over the last sessions: {sessions}"
