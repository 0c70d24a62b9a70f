"""One rank of the mask-broadcast test (run by torch.distributed.run from tests/test_multiprocess.py).

Every rank starts from different weights, so magnitude pruning would choose different masks locally;
the pruner must adopt rank 0's. Writes `rank<N>.json` (local choice and adopted masks) into argv[1].
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from prunebert import PruningConfig
from prunebert.distributed import mask_digest
from prunebert.masks import layerwise_masks
from prunebert.pruner import Pruner
from tiny import tiny_classifier


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_classifier(seed=rank)  # different weights on every rank
    pruner = Pruner(model, PruningConfig(sparsity=0.5, schedule="oneshot"))
    pruner.start(10)
    magnitudes = {name: w.detach().abs() for name, w in pruner.weights().items()}
    local = mask_digest(layerwise_masks(magnitudes, 0.5))  # what this rank alone would prune
    pruner.update(0)
    zeros_follow_masks = all(torch.equal(w == 0, ~pruner.masks[n]) for n, w in pruner.weights().items())
    record = {"local": local, "adopted": mask_digest(pruner.masks), "zeros_follow_masks": zeros_follow_masks}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
