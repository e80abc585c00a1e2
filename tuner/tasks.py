"""The two tasks ``tuner`` trains for, and the metric each reports beside its loss."""

TASKS = ("classification", "regression")
# Per task: the metric reported beside the loss (as `<name>` on training, `val_<name>`
# on the validation split, `test_<name>` for the best trial).
TASK_METRIC = {"classification": "accuracy", "regression": "mae"}
