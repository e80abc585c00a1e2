"""tuner: distributed hyperparameter tuning of Keras models on Ray (Tune + Train)."""

__version__ = "0.1.0"
