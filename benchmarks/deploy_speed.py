"""CPU latency of structured, unstructured and reduced-precision forms of one encoder shape, in one run.

Builds random-weight classifiers of a chosen shape (timing does not depend on the weights' values):
`dense`; `unstructured90` (90% of every encoder matrix zeroed by magnitude); `slim50` (half the heads and
half the FFN neurons of every layer zeroed, then physically removed by `prunebert slim`), then times them
with `prunebert.deploy.bench.run_bench` against the dense torch fp32 model: every variant of every
model, batch sizes 1 and 8, sequence 128, interleaved rounds, disturbed rounds discarded. Writes
`benchmarks/results/deploy_speed_<size>.json` (the bench JSON plus how the models were built).

    .venv/bin/python benchmarks/deploy_speed.py --size bert-base          # long: run on an idle machine
    .venv/bin/python benchmarks/deploy_speed.py --size tiny --rounds 1    # seconds: a smoke test
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, BertTokenizerFast, PreTrainedModel

from prunebert.cli import main as prunebert_main
from prunebert.deploy.bench import BenchSettings, format_bench, run_bench
from prunebert.deploy.bench_runners import VARIANTS
from prunebert.io import write_json
from prunebert.masks import topk_mask
from prunebert.targets import find_targets
from shapes import ENCODER_SHAPES  # benchmarks/shapes.py: the script's folder is on sys.path

SIZES = {name: ENCODER_SHAPES[name] for name in ("tiny", "minilm", "bert-base")}


def build(size: str, seed: int = 0) -> PreTrainedModel:
    """A BERT classifier of `size` with seeded random weights."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model("bert", vocab_size=30522, num_labels=2, **SIZES[size])
    return AutoModelForSequenceClassification.from_config(config).eval()


@torch.no_grad()
def zero_unstructured(model: PreTrainedModel, sparsity: float) -> None:
    """Zero the smallest |w| of every encoder matrix (+0.0, as a baked mask leaves them)."""
    for target in find_targets(model):
        weight = model.get_submodule(target.name).get_parameter("weight")
        weight.masked_fill_(~topk_mask(weight.abs(), sparsity), 0.0)


@torch.no_grad()
def zero_structure(model: PreTrainedModel, fraction: float) -> None:
    """Zero the output columns of the first `fraction` of heads and FFN neurons of every layer."""
    config = model.config
    head = config.hidden_size // config.num_attention_heads
    heads, neurons = int(config.num_attention_heads * fraction), int(config.intermediate_size * fraction)
    for layer in model.bert.encoder.layer:
        layer.attention.output.dense.weight[:, : heads * head] = 0
        layer.output.dense.weight[:, :neurons] = 0


def save(model: PreTrainedModel, directory: Path) -> str:
    """Save with a small offline WordPiece tokenizer (bench feeds token ids; the tokenizer is not timed)."""
    model.save_pretrained(directory)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(100))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast.from_pretrained(str(directory)).save_pretrained(directory)
    return str(directory)


def make_models(size: str, root: Path) -> dict[str, str]:
    """dense, unstructured90 and slim50 model directories under `root`."""
    paths = {"dense": save(build(size), root / "dense")}
    sparse = build(size)
    zero_unstructured(sparse, 0.9)
    paths["unstructured90"] = save(sparse, root / "unstructured90")
    structured = build(size)
    zero_structure(structured, 0.5)
    save(structured, root / "structured50")
    if prunebert_main(["slim", str(root / "structured50"), str(root / "slim50")]) != 0:
        raise SystemExit("prunebert slim failed")
    paths["slim50"] = str(root / "slim50")
    return paths


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="bert-base")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="bench variants (default: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--openvino-sparse-rate", type=float, default=None)
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/deploy_speed_<size>.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    settings = BenchSettings(
        variants=tuple(v for v in args.variants.split(",") if v),
        rounds=args.rounds,
        iters=args.iters,
        threads=args.threads,
        openvino_sparse_rate=args.openvino_sparse_rate,
    )
    with tempfile.TemporaryDirectory(prefix="deploy-speed-") as scratch:
        paths = make_models(args.size, Path(scratch))
        result = run_bench(list(paths.values()), settings)
    names = {path: name for name, path in paths.items()}
    result["model_names"] = names  # scratch paths -> what each model is
    result["benchmark"] = {
        "size": args.size,
        "shape": SIZES[args.size],
        "models": {
            "dense": "random weights",
            "unstructured90": "90% of every encoder matrix zeroed by magnitude (+0.0)",
            "slim50": "first half of the heads and FFN neurons of every layer zeroed, then removed (slim)",
        },
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
    }
    out = args.out or Path(__file__).parent / "results" / f"deploy_speed_{args.size}.json"
    write_json(out, result)
    print(format_bench(result, names))
    print(f"\nresults: {out}")
    return result


if __name__ == "__main__":
    main()
