"""Embedding throughput: grit-hf `encode`, the reference `gritlm` package and the sentence-transformers path, on the
same model, texts and batch size in one run.

Texts: the man-page retrieval set (`data/manpages/eval`): `--n-docs` documents (embedded without instruction) and
`--n-queries` queries (with the task instruction), each truncated to `--max-length` tokens. Every method embeds both
sets `--rounds` times, the methods interleaved round by round; a method's time is its fastest round (the machine may be
shared). Reported: texts/s, real (non-padding) tokens/s, an estimate of the useful TFLOP/s (2 x non-embedding params
per token + 4 x layers x hidden per token pair of bidirectional attention) against a measured matmul peak of the same
dtype, ratios to grit-hf and to the reference in the first dtype, and the cosine of every variant's embeddings to
grit-hf's in the first dtype (what bf16 costs).

CPU, the default model (SmolLM2-135M-Instruct) in fp32 and bf16, grit-hf against the reference, at 1 and 2 threads:

    python benchmarks/encode_throughput.py --n-docs 128 --n-queries 128 --threads 1 2 \\
        --output benchmarks/results/encode_throughput_cpu

H100 (CUDA only; exits 0 with a message without it), a Mistral-7B-shaped model with random bf16 weights:

    python benchmarks/encode_throughput.py --model mistral-7b-random --device cuda --dtypes bfloat16 \\
        --n-docs 2000 --n-queries 2000 --batch-size 64 --max-length 512 --output benchmarks/results/encode_throughput_h100
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from report import command_line, data_folder
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["main"]
DATA = data_folder() / "manpages" / "eval"
INSTRUCTION = (
    "Given a one-line summary from a Unix manual page, retrieve the manual page description that it summarizes"
)


def read_texts(n_docs: int, n_queries: int, seed: int = 0) -> tuple[list[str], list[str]]:
    docs = [json.loads(line)["text"] for line in (DATA / "corpus.jsonl").open()]
    queries = [json.loads(line)["text"] for line in (DATA / "queries.jsonl").open()]
    rng = random.Random(seed)
    return rng.sample(docs, min(n_docs, len(docs))), rng.sample(queries, min(n_queries, len(queries)))


def make_random_mistral_7b(folder: Path, dtype: torch.dtype, stock: bool = False) -> Path:
    """A Mistral-7B-shaped GRIT checkpoint (with `stock`, a stock `MistralForCausalLM` checkpoint, as the reference
    `gritlm` loads) with random weights and a BPE tokenizer trained on the man pages."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    from grit_hf import GritLMConfig, GritLMForCausalLM, save_grit_checkpoint

    docs, queries = read_texts(10**9, 10**9)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=32000, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(docs + queries, trainer=trainer)
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    text_config = MistralConfig(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, sliding_window=None,
        bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            model = (
                MistralForCausalLM(text_config) if stock else GritLMForCausalLM(GritLMConfig(text_config=text_config))
            )
    finally:
        torch.set_default_dtype(default_dtype)
    if stock:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        save_grit_checkpoint(model, tokenizer, folder)
    del model
    torch.cuda.empty_cache()
    return folder


def matmul_peak_tflops(device: str, dtype: torch.dtype, size: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * size**3 / best / 1e12


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encode_flops(config, token_lengths: list[int]) -> float:
    """Forward FLOPs of embedding texts of these lengths (no LM head): matmuls with the non-embedding weights plus
    bidirectional attention scores and values."""
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv = text.num_key_value_heads * head_dim
    per_layer = 2 * text.hidden_size * (text.num_attention_heads * head_dim + 2 * kv)  # q, k, v
    per_layer += 2 * text.num_attention_heads * head_dim * text.hidden_size  # o
    experts = getattr(text, "num_experts_per_tok", 1) or 1
    per_layer += 2 * 3 * text.hidden_size * text.intermediate_size * experts  # gated MLP
    attention = 4 * text.num_attention_heads * head_dim * text.num_hidden_layers
    return float(sum(per_layer * text.num_hidden_layers * n + attention * n * n for n in token_lengths))


def _runners(args, path: Path, dtype: torch.dtype, queries_prefix: str, doc_prefix: str) -> dict:
    """`{method: run(docs, queries) -> (doc embeddings, query embeddings)}` for one dtype."""
    from grit_hf import GritLMModel

    runners = {}
    for method in args.methods:
        if method == "grit-hf":
            model = GritLMModel.from_pretrained(path, dtype=dtype).to(args.device).eval()
            runners[method] = lambda d, q, m=model: (
                m.encode(d, batch_size=args.batch_size, max_length=args.max_length, show_progress_bar=False),
                m.encode(q, instruction=INSTRUCTION, batch_size=args.batch_size, max_length=args.max_length,
                         show_progress_bar=False),
            )  # fmt: skip
        elif method == "reference":
            try:
                from gritlm import GritLM
            except ImportError:
                print("gritlm is not installed (pip install --no-deps gritlm): skipping the reference.")
                continue
            reference = GritLM(str(path), attn="bbcc", device=args.device, dtype=dtype)
            runners[method] = lambda d, q, r=reference: (
                r.encode(d, instruction=doc_prefix, batch_size=args.batch_size, max_length=args.max_length),
                r.encode(q, instruction=queries_prefix, batch_size=args.batch_size, max_length=args.max_length),
            )
        elif method == "sentence-transformers":
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(path), device=args.device, model_kwargs={"dtype": dtype})
            st.max_seq_length = args.max_length
            runners[method] = lambda d, q, s=st: (
                s.encode_document(d, batch_size=args.batch_size, show_progress_bar=False),
                s.encode(q, prompt=queries_prefix, batch_size=args.batch_size, show_progress_bar=False),
            )
        else:
            raise SystemExit(f"Unknown method {method!r}.")
    return runners


def _cosines(a, b) -> np.ndarray:
    a, b = (
        np.concatenate([np.asarray(x, np.float32) for x in a]),
        np.concatenate([np.asarray(x, np.float32) for x in b]),
    )
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="GRIT checkpoint folder, 'default' or 'mistral-7b-random'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--n-docs", type=int, default=256)
    parser.add_argument("--n-queries", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[0], help="torch CPU threads to measure (0: torch's)"
    )
    parser.add_argument("--methods", nargs="+", default=["grit-hf", "reference"])
    parser.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available: skipping the GPU throughput benchmark.")
        return 0

    import grit_hf  # noqa: F401  (registers the model type)
    from grit_hf import GritLMConfig
    from grit_hf.folders.resolve import resolve_checkpoint
    from grit_hf.folders.sentence_transformers import grit_prompt

    workdir = tempfile.TemporaryDirectory(prefix="grit-throughput-")
    if args.model == "mistral-7b-random":
        if not args.device.startswith("cuda"):
            raise SystemExit("--model mistral-7b-random needs --device cuda.")
        path = make_random_mistral_7b(Path(workdir.name) / "mistral-7b-random", getattr(torch, args.dtypes[0]))
    else:
        path = Path(resolve_checkpoint(args.model))
    docs, queries = read_texts(args.n_docs, args.n_queries)
    config = GritLMConfig.from_pretrained(path)
    doc_prefix, query_prefix = grit_prompt(config), grit_prompt(config, INSTRUCTION)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    lengths = [
        min(len(ids), args.max_length)
        for prefix, texts in ((doc_prefix, docs), (query_prefix, queries))
        for ids in tokenizer([prefix + text for text in texts])["input_ids"]
    ]
    flops = encode_flops(config, lengths)
    runners = {}
    for name in args.dtypes:
        for method, run in _runners(args, path, getattr(torch, name), query_prefix, doc_prefix).items():
            runners[(method, name)] = run
    peak_size = 8192 if args.device.startswith("cuda") else 2048
    rows, outputs = [], {}
    for threads in args.threads:
        if threads:
            torch.set_num_threads(threads)
        peaks = {name: matmul_peak_tflops(args.device, getattr(torch, name), peak_size) for name in args.dtypes}
        with torch.inference_mode():
            for run in runners.values():  # warm-up on a few texts
                run(docs[:8], queries[:8])
        times = {key: float("inf") for key in runners}
        for _ in range(args.rounds):
            for key, run in runners.items():  # interleaved, so a busy moment hits every variant alike
                sync(args.device)
                start = time.perf_counter()
                outputs[key] = run(docs, queries)
                sync(args.device)
                times[key] = min(times[key], time.perf_counter() - start)
        for name in args.dtypes:  # before and after: the best of both
            peaks[name] = max(peaks[name], matmul_peak_tflops(args.device, getattr(torch, name), peak_size))
        own = ("grit-hf", args.dtypes[0])
        n_texts, n_tokens = len(docs) + len(queries), sum(lengths)
        for (method, name), seconds in times.items():
            cosine = _cosines(outputs[(method, name)], outputs[own]) if own in outputs else None
            rows.append({
                "threads": torch.get_num_threads(), "method": method, "dtype": name, "seconds": round(seconds, 3),
                "texts_per_s": round(n_texts / seconds, 2), "tokens_per_s": round(n_tokens / seconds, 1),
                "tflops": round(flops / seconds / 1e12, 4),
                "fraction_of_matmul_peak": round(flops / seconds / 1e12 / peaks[name], 4),
                "speedup_vs_grit_hf_first_dtype": round(times[own] / seconds, 3) if own in times else None,
                "speedup_vs_reference_first_dtype": round(times[("reference", args.dtypes[0])] / seconds, 3)
                if ("reference", args.dtypes[0]) in times else None,
                "cosine_to_grit_hf_first_dtype_mean": None if cosine is None else round(float(cosine.mean()), 6),
                "cosine_to_grit_hf_first_dtype_min": None if cosine is None else round(float(cosine.min()), 6),
                "matmul_peak_tflops": round(peaks[name], 3),
            })  # fmt: skip
    import sentence_transformers
    import transformers

    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command_line(__file__, argv),
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "sentence_transformers": sentence_transformers.__version__, "grit_hf": grit_hf.__version__},
        "model": str(args.model), "dtypes": args.dtypes, "device": args.device, "batch_size": args.batch_size,
        "max_length": args.max_length, "n_docs": len(docs), "n_queries": len(queries), "real_tokens": sum(lengths),
        "results": rows,
    }  # fmt: skip
    first = args.dtypes[0]
    table = [
        f"| threads | method | dtype | seconds | texts/s | TFLOP/s | of its matmul peak | vs grit-hf {first} | "
        f"vs reference {first} | cosine to grit-hf {first} (mean / min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row["speedup_vs_reference_first_dtype"]
        cosine, lowest = row["cosine_to_grit_hf_first_dtype_mean"], row["cosine_to_grit_hf_first_dtype_min"]
        table.append(
            f"| {row['threads']} | {row['method']} | {row['dtype']} | {row['seconds']} | {row['texts_per_s']} | "
            f"{row['tflops']} | {row['fraction_of_matmul_peak']:.1%} | {row['speedup_vs_grit_hf_first_dtype']}x | "
            f"{'-' if ratio is None else f'{ratio}x'} | "
            f"{'-' if cosine is None else f'{cosine} / {lowest}'} |"
        )
    print(json.dumps(result, indent=2))
    print("\n".join(table))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.output}.json").write_text(json.dumps(result, indent=2) + "\n")
        header = [
            f"# Embedding throughput ({args.device}, {args.model}: {', '.join(args.dtypes)})",
            "",
            f"- date: {result['date']}",
            f"- command: `{result['command']}`",
            f"- machine: {result['machine']}",
            f"- versions: {result['versions']}",
            f"- texts: {len(docs)} man-page documents (no instruction) + {len(queries)} queries (instruction), "
            f"max {args.max_length} tokens, {sum(lengths)} real tokens; batch size {args.batch_size}; best of "
            f"{args.rounds} interleaved rounds after a warm-up, per thread count",
            "",
        ]
        Path(f"{args.output}.md").write_text("\n".join(header + table) + "\n")
    workdir.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
