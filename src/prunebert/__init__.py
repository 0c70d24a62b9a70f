"""prunebert: prune BERT-family encoders in pre-training and fine-tuning, and make them smaller for real."""

from prunebert.api import prune, prune_while_training
from prunebert.callback import PruningCallback, log_pruning_first
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.methods import available_methods, register_method
from prunebert.pruner import Pruner

__all__ = [
    "PrunebertError",
    "Pruner",
    "PruningCallback",
    "PruningConfig",
    "available_methods",
    "log_pruning_first",
    "prune",
    "prune_while_training",
    "register_method",
]
__version__ = "0.1.0"
