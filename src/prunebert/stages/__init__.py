"""The training stages, each an ordinary HF Trainer run with the pruning callback."""
