"""The real trainer runtime: TFX and TensorFlow Recommenders import in it, with Keras 2 and
protobuf < 5, and the trainer package on its path. `make test` builds it first (into the
user's cache; later runs reuse it), so here it is normally found, not built."""

from __future__ import annotations

import json
import subprocess

import pytest

from cairn.trainer_runtime import ensure_trainer_runtime

pytestmark = pytest.mark.slow

CHECK = """
import importlib.util, json
import google.protobuf
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tfx
from tfx import v1 as tfx_v1
print(json.dumps({
    "tensorflow": tf.__version__,
    "keras": tf.keras.__name__,
    "tfrs": tfrs.__version__,
    "tfx": tfx.__version__,
    "protobuf": google.protobuf.__version__,
    "trainer_package": importlib.util.find_spec("cairn_trainer") is not None,
    "pipeline_api": hasattr(tfx_v1.dsl, "Pipeline"),
}))
"""


@pytest.mark.timeout(1800)  # builds (a few minutes) only where `make test` did not
def test_tfx_and_tfrs_import_in_the_trainer_runtime() -> None:
    runtime = ensure_trainer_runtime()
    assert runtime.python.exists()
    assert runtime.python_version.startswith(("3.10.", "3.11."))
    result = subprocess.run(
        [str(runtime.python), "-c", CHECK],
        env=runtime.env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["tfx"] == "1.16.0"
    assert facts["tensorflow"].startswith("2.16.")
    assert facts["keras"].startswith("tf_keras"), "TF_USE_LEGACY_KERAS=1 must select Keras 2"
    assert int(facts["protobuf"].split(".")[0]) < 5
    assert facts["trainer_package"], "PYTHONPATH must reach cairn_trainer"
    assert facts["pipeline_api"]
    assert runtime.versions.get("tfx") == facts["tfx"]
