"""Which generation engine: grit-hf's decode loop against transformers' `generate` on the same composed cache.

The question (the redesign issue): can grit-hf decode a doc-cached answer with stock `generate` (continuing from the
composed cache) at the speed of its own loop? Both engines get exactly the same composed prompt: an N-token document
whose states are cached, then a short question. Timed per engine and N, the median of `--runs` runs after a warm-up,
round-robin: the whole answer (composing the cached document into a cache, running the question on top, then
`--new-tokens` greedy tokens, end token ignored). `generate` is given the composed cache (a transformers
`DynamicCache`, or grit-hf's preallocated one) and the full prompt ids; it runs only the ids past the cache. The
greedy tokens of both engines are compared.

CPU, the default model:

    python benchmarks/decode_engine.py --lengths 1000 4000 --runs 5 --threads 1 --output benchmarks/results/decode_engine_cpu
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from report import command_line, environment, write_report

SENTENCE = "The Seine flows through Paris before it reaches the English Channel at Le Havre. "


def _document(tokenizer, n_tokens: int) -> str:
    text = SENTENCE * (n_tokens // 10 + 2)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def _grit_answer(rag, parts, options) -> tuple[list[int], float]:
    started = time.perf_counter()
    result = rag.generator.generate(parts, options)
    return result.token_ids, time.perf_counter() - started


def _generate_answer(rag, parts, prompt_ids, cache_kind: str, new_tokens: int) -> tuple[list[int], float]:
    """Compose the cached parts (as the engine does), then let `generate` run the rest of the prompt and decode."""
    from grit_hf.cache.buffers import new_cache
    from grit_hf.generation.compose import close_with_text, compose
    from grit_hf.generation.plan import Cached, PromptPlan

    model = rag.model
    started = time.perf_counter()
    with torch.inference_mode():
        cached = PromptPlan([item for item in close_with_text(parts.items) if isinstance(item, Cached)])
        cache = new_cache(cache_kind, model.config.text_config, prompt_ids.shape[1] + new_tokens)
        cache = compose(model, cached, cache, rag.generator.rotary_emb, model.device).cache
        output = model.generate(
            input_ids=prompt_ids.to(model.device),
            attention_mask=torch.ones_like(prompt_ids).to(model.device),
            cache=cache,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
    return output[0, prompt_ids.shape[1] :].tolist(), time.perf_counter() - started


def run(args: argparse.Namespace) -> dict:
    from grit_hf import GritRAG, load_model
    from grit_hf.generation.engine import GenerationOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    rag = GritRAG(model, cache_attention="causal", max_length=max(args.lengths) + 64)
    options = GenerationOptions(max_new_tokens=args.new_tokens, ignore_eos=True)
    rows = []
    for n_tokens in args.lengths:
        doc_id = rag.add_documents([_document(rag.tokenizer, n_tokens)])[0]
        plan = rag.build_plan("Where does the Seine flow?", "doc", [doc_id])
        parts = rag.resolve(plan)
        prompt_ids = torch.tensor([[t for item in rag.resolve(plan, reuse_cache=False).items for t in item.ids]])

        engines = {
            "grit-hf loop (preallocated)": functools.partial(_grit_answer, rag, parts, options),
            "transformers generate (DynamicCache)": functools.partial(
                _generate_answer, rag, parts, prompt_ids, "dynamic", args.new_tokens
            ),
            "transformers generate (preallocated)": functools.partial(
                _generate_answer, rag, parts, prompt_ids, "preallocated", args.new_tokens
            ),
        }
        times = {name: [] for name in engines}
        tokens = {}
        for repeat in range(args.runs + 1):
            for name, engine in engines.items():
                token_ids, total = engine()
                tokens[name] = token_ids
                if repeat:  # the first round warms up
                    times[name].append(total)
        reference = tokens["grit-hf loop (preallocated)"]
        for name in engines:
            rows.append(
                {
                    "n_tokens": n_tokens,
                    "engine": name,
                    "answer_s": statistics.median(times[name]),
                    "same_tokens": tokens[name] == reference,
                }
            )
        rag.store.delete(doc_id)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=None, help="write OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    result = run(args)
    report = {
        "environment": environment("transformers", "grit-hf"),
        "command": command_line(__file__, argv),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        **result,
    }
    lines = [
        "# Decode engine: grit-hf's loop vs transformers `generate` on the same composed cache",
        "",
        f"`{report['command']}` — {report['environment']['date']}, {report['environment']['machine']['cpu']}, "
        f"torch {report['environment']['versions']['torch']}, transformers {report['environment']['versions']['transformers']}",
        "",
        "| doc tokens | engine | answer (s) | ratio to grit-hf | same tokens |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        base = next(
            r for r in result["rows"] if r["n_tokens"] == row["n_tokens"] and r["engine"].startswith("grit-hf")
        )
        lines.append(
            f"| {row['n_tokens']} | {row['engine']} | {row['answer_s']:.3f} | "
            f"{row['answer_s'] / base['answer_s']:.2f}x | {row['same_tokens']} |"
        )
    write_report(args.output, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
