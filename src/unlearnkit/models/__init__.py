"""Models: a small CNN for the embedded default, its training recipe and its cache."""

from unlearnkit.models.pretrained import DefaultModel, load_default_model, load_pretrained, load_retrained
from unlearnkit.models.small_cnn import SmallCNN
from unlearnkit.models.training import TrainRecipe, train_classifier

__all__ = [
    "DefaultModel",
    "SmallCNN",
    "TrainRecipe",
    "load_default_model",
    "load_pretrained",
    "load_retrained",
    "train_classifier",
]
