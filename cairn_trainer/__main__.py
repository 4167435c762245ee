"""``python -m cairn_trainer run --spec /abs/path/spec.json`` (see cairn_trainer.cli)."""

from __future__ import annotations

import os
import sys

# Before anything imports TensorFlow: TFRS 0.7.7 needs Keras 2 (tf_keras), and TF's C++
# INFO chatter would drown the job's log.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from cairn_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
