"""Cairn's TFX trainer: the code that runs inside the trainer runtime.

It runs under its own Python 3.10 environment (tfx 1.16, TensorFlow 2.16, TFRS 0.7.7,
protobuf 3.20), so nothing in this package may import ``cairn``, ``services``, grpc or the
generated stubs: it talks to Cairn only through files in the job directory and the
gateway's REST/JSON API. Entry point: ``python -m cairn_trainer run --spec spec.json``.

This module imports nothing heavy on purpose: the services' test suite (Python 3.11, no
TensorFlow) imports ``cairn_trainer.splits`` and ``cairn_trainer.spec``.
"""

from __future__ import annotations

__all__: list[str] = []
