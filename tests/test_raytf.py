"""The trial driver builds its TensorflowTrainer without TensorFlow and without extra actors."""

import json
import subprocess
import sys

PROBE = """
import json, sys
from tuner import raytf, worker
from ray.train.v2._internal.callbacks import DatasetsCallback
trainer = raytf.trainer(train_loop_per_worker=worker.train_loop_per_worker, tensorflow_config=raytf.Config())
callbacks = trainer._create_default_callbacks()
print(json.dumps({
    "tensorflow_imported": "tensorflow" in sys.modules,
    "datasets_callback": any(isinstance(c, DatasetsCallback) for c in callbacks),
}))
"""


def test_trainer_needs_no_tensorflow_and_no_dataset_manager():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe == {"tensorflow_imported": False, "datasets_callback": False}
