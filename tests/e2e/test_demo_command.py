"""The README's main job, `cairn demo`, as a user runs it: a real process starting a real
stack, a real TFX quick test in the trainer runtime, the held-out recall printed, the stack
stopped. (Smaller than the default demo: a 5% sample and one epoch.)"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_cairn_demo_runs_a_retrieval_quick_test_and_prints_its_recall(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CAIRN_TRACKER_PORT": str(_free_port()),
        "CAIRN_TRACKER_METRICS_PORT": "0",
        "CAIRN_SCHEDULER_PORT": str(_free_port()),
        "CAIRN_LOGPROXY_PORT": str(_free_port()),
        "CAIRN_ANALYTICS_PORT": str(_free_port()),
        "CAIRN_GATEWAY_PORT": str(_free_port()),
        "COLUMNS": "200",
    }
    data_dir = tmp_path / "cairn-data"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "cairn.cli", "demo", "--data-dir", str(data_dir)),
            *("--sample", "5", "--epochs", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,  # from any directory: the sample dataset is package data
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    recall = re.search(
        r"Held-out Recall@5 ([\d.]+)  Recall@10 ([\d.]+)  Recall@50 ([\d.]+)  "
        r"Recall@100 ([\d.]+)",
        output,
    )
    assert recall, output
    at5, at10, at50, at100 = (float(v) for v in recall.groups())
    assert 0 <= at5 <= at10 <= at50 <= at100 <= 1
    assert at100 > 0.1, output  # chance with 1,000 items
    assert "cairn jobs show" in output
    assert "succeeded" in output
    # The stack it started is stopped again, and its data stayed where it was told.
    assert not (data_dir / "cairn.pid").exists()
    assert (data_dir / "cairn.db").exists()
