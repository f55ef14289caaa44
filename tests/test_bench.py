"""The benchmark scripts run: a short round of each that starts in seconds prints the
figures it promises (what they measure is for `make bench`, not for a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_publishing_benchmark_prints_both_ways_per_message() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_publish.py", "--rounds", "1", "--batches", "2", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(figures) == {"nats-py publish_async", "publish_acked"}
    for way in figures.values():
        assert way["cpu_us_per_message"] > 0
        # one thread's CPU time cannot run ahead of the wall clock
        assert way["wall_us_per_message"] >= way["cpu_us_per_message"] * 0.99


def test_a_benchmark_refuses_a_count_it_cannot_use() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_publish.py", "--rounds", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--rounds and --batches: expected at least 1" in done.stderr
