"""tuner: distributed hyperparameter tuning of Keras models on Ray (Tune + Train).

A model builder (``model.builder: "module:function"`` in the spec) gets the trial's
model hyperparameters and a ``tuner.InputSpec``, and returns an uncompiled tf_keras model.
"""

from tuner.models import InputSpec

__version__ = "0.1.0"
__all__ = ["InputSpec", "__version__"]
