"""Where everything a job writes lives, under its work_dir (the scheduler reads these)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class JobPaths:
    work_dir: str

    def _join(self, *parts: str) -> str:
        return os.path.join(self.work_dir, *parts)

    @property
    def data(self) -> str:
        return self._join("data")

    @property
    def tfx(self) -> str:
        """Pipeline root and ML Metadata; recreated by every run of the job."""
        return self._join("tfx")

    @property
    def pipeline_root(self) -> str:
        return self._join("tfx", "pipeline")

    @property
    def metadata(self) -> str:
        return self._join("tfx", "metadata.sqlite")

    @property
    def outputs(self) -> str:
        return self._join("outputs")

    def output(self, name: str) -> str:
        return self._join("outputs", name)

    @property
    def progress(self) -> str:
        return self._join("progress.jsonl")

    @property
    def training_metrics(self) -> str:
        return self._join("training_metrics.json")

    @property
    def result(self) -> str:
        return self._join("result.json")
