"""What every worker of one trial is told: ``TrialConfig``, built once by the trial's
driver from the Spec and the trial's hyperparameters, read by attribute.

Ray Train hands a trainer's ``train_loop_config`` to its dashboard state as JSON, so the
config travels as ``to_dict()`` and each worker makes it a ``TrialConfig`` again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.storage import Location


@dataclass(frozen=True)
class TrialConfig:
    # The trial's hyperparameters (a PBT member's: this generation's).
    params: dict
    # The staged dataset, and the S3 endpoint of it and of the storage.
    dataset_uri: str
    endpoint: str | None
    # The model: "module:function", the Keras loss (None: the task's), the dataset's
    # ``tuner.models.InputSpec`` as a dict.
    builder: str
    loss: str | None
    inputs: dict
    # The epoch budget, the seed, and the learning-rate rules of ``training``.
    max_t: int
    seed: int
    lr_scaling: str
    reference_batch: int
    warmup_epochs: float
    # ``training.hyperparameter_schedule`` (a replayed PBT schedule), or None.
    hp_schedule: list | None
    # ``checkpoint.upload``: "async" or "sync".
    checkpoint_upload: str
    # TensorFlow's intra-op threads (0: its default).
    threads: int
    # This trial's Ray Train run: its folder (its checkpoints) and name.
    run_uri: str = ""
    run: str = ""
    trial_id: str = ""
    # Unix time the trial's driver started (start-up figures), GPUs Ray gave it.
    trial_start: float = 0.0
    driver_gpus: int = 0
    # The run's ``resume.Slots`` actor (None: no driver to ask, as in unit tests).
    slots: str | None = None
    # ``tuner.console.LEVELS``.
    console: str = "normal"
    # A PBT member's generation and its perturbation interval (None otherwise).
    generation: int | None = None
    pbt_interval: int | None = None

    @classmethod
    def for_experiment(cls, spec, inputs: dict) -> dict:
        """The fields every trial of an experiment shares (a trial adds its own)."""
        from tuner import storage

        return {
            "dataset_uri": spec.dataset_uri(),
            "endpoint": storage.endpoint_from_env(spec.storage.endpoint),
            "builder": spec.model.builder,
            "loss": spec.model.loss,
            "inputs": inputs,
            "max_t": spec.asha.max_t,
            "seed": spec.search.seed,
            "lr_scaling": spec.training.lr_scaling,
            "reference_batch": spec.training.reference_batch,
            "warmup_epochs": spec.training.warmup_epochs,
            "hp_schedule": spec.training.hyperparameter_schedule,
            "checkpoint_upload": spec.checkpoint.upload,
            "threads": max(1, int(spec.scaling.cpus_per_worker)) if not spec.scaling.use_gpu else 0,
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> "TrialConfig":
        return cls(**config)

    @property
    def dataset(self) -> Location:
        """The staged dataset's location."""
        from tuner.storage import Location

        return Location(self.dataset_uri, self.endpoint)

    @property
    def run_location(self) -> Location:
        """This trial's Ray Train run's folder (its checkpoints)."""
        from tuner.storage import Location

        return Location(self.run_uri, self.endpoint)
