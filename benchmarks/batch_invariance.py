"""Do greedy answers depend on what else is being decoded? Batched decoding (`grit_hf.generation.batched`, the server's
default) on the default model, per dtype.

1. Answers: 20 greedy chats (`--new-tokens` tokens, the end token ignored) decoded alone (one stream in the decode
   batch), then all 20 at once (20 threads, joining the batch as they arrive, as in the server); the answers whose
   tokens differ are counted, for each variant of the decode step: before (`today`); a lone stream decoded as 2 rows
   (its shadow row, `DecodeBatch.invariant`); and that plus the decode attention row by row over each row's own keys
   (`grit_hf.attention._decode_attention`: batch-invariant, the default).
2. Which operations make a row depend on the batch, from one batched decode step's real inputs (8 streams): each
   linear layer's rows in one call of all rows against the same rows in calls of one row and of two rows; the decode
   attention over the whole padded batch at once against each row over its own keys, before and after the rounding
   to the model's dtype.
3. What each variant costs: decode throughput of 1 and of 8 streams, in tokens per second of the decoding thread's CPU
   time (one torch thread; so that the other processes of a busy machine do not count), best of `--runs`, the
   variants taking turns.

    OMP_NUM_THREADS=1 python benchmarks/batch_invariance.py --threads 1 --output benchmarks/results/batch_invariance_cpu
"""

from __future__ import annotations

import argparse
import collections
import threading
import time

import torch
import torch.nn.functional as F
from report import SENTENCES, command_line, environment, write_report

__all__ = ["main", "answers", "linear_rows", "attention_rows"]

TOPICS = ["Paris", "photosynthesis", "the Eiffel Tower", "Berlin", "decoders", "glaciers", "the Danube", "bees"]


def prompts(rag, count: int) -> list[str]:
    """`count` chat prompts of different lengths (1 to 8 sentences of context, then a question)."""
    out = []
    for index in range(count):
        context = " ".join(SENTENCES[(index + j) % len(SENTENCES)] for j in range(1 + index % 8))
        question = f"{context}\nIn two sentences, what is said about {TOPICS[index % len(TOPICS)]}?"
        out.append(rag.render_chat([{"role": "user", "content": question}]))
    return out


def answers(rag, texts: list[str], new_tokens: int, together: bool) -> tuple[list[list[int]], float]:
    """Greedy token ids of each prompt (alone, one after the other; or all at once) and the wall time."""
    options = dict(max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True)
    results: list[list[int] | None] = [None] * len(texts)
    start = time.perf_counter()
    if not together:
        for index, text in enumerate(texts):
            results[index] = rag.generate(text, **options).token_ids
        return results, time.perf_counter() - start
    barrier = threading.Barrier(len(texts))

    def run(index: int) -> None:
        barrier.wait()
        results[index] = rag.generate(texts[index], **options).token_ids

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def _step_inputs(model, texts: list[str]) -> dict[str, list]:
    """The inputs of every linear layer (by kind) and of every decode attention call in one batched decode step."""
    from grit_hf import attention as attention_module

    captured = collections.defaultdict(list)
    hooks = [
        module.register_forward_hook(lambda m, args, out, n=name: captured[n.split(".")[-1]].append((m, args[0])))
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    real = attention_module._decode_attention

    def spy(query, key, value, mask, scaling):
        captured["attention"].append((query, key, value, mask, scaling))
        return real(query, key, value, mask, scaling)

    attention_module._decode_attention = spy  # the step runs row by row; the rows are compared in `attention_rows`
    try:
        from grit_hf.generation.batched import DecodeBatch

        batch = DecodeBatch(model, set(), None)
        streams = _prefilled_streams(model, texts)
        with torch.inference_mode():
            captured.clear()
            batch._join(streams)
            batch._forward([int(s.logits.argmax()) for s in streams])
    finally:
        attention_module._decode_attention = real
        for hook in hooks:
            hook.remove()
    return captured


def _prefilled_streams(model, texts: list[str]) -> list:
    """A decode-batch stream per text: its prompt's states and last logits (what the batch receives from a prefill)."""
    from grit_hf.generation.batched import _Stream

    streams = []
    with torch.inference_mode():
        for text in texts:
            ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
            out = model.causal_lm_forward(input_ids=ids, use_cache=True, logits_to_keep=1)
            layers = [(layer.keys, layer.values) for layer in out.cache.layers]
            streams.append(_Stream(out.logits[0, -1], ids.shape[1], None, None, layers, None))
    return streams


def linear_rows(captured: dict) -> dict[str, dict]:
    """Per linear kind: rows whose output differs between a call of M rows and calls of 1 row / of 2 rows."""
    report = {}
    with torch.inference_mode():
        for kind, calls in captured.items():
            if kind == "attention":
                continue
            alone = pair = total = 0
            for module, x in calls:
                x = x.reshape(-1, x.shape[-1])
                batched = F.linear(x, module.weight, module.bias)
                one = torch.cat([F.linear(x[i : i + 1], module.weight, module.bias) for i in range(len(x))])
                two = torch.cat([F.linear(x[[i, i]], module.weight, module.bias)[:1] for i in range(len(x))])
                alone += int((batched != one).any(-1).sum())
                pair += int((batched != two).any(-1).sum())
                total += len(x)
            report[kind] = {"rows": total, "differ_from_1_row": alone, "differ_from_2_rows": pair}
    return report


def attention_rows(captured: dict) -> dict[str, int]:
    """Rows of the decode attention over the whole padded batch at once (`_attend_batch`, as before) that differ from the
    row over its own keys alone (one layer and row each): in fp32 before the rounding to the model's dtype, and
    after it."""
    from grit_hf.attention import _attend_batch as _decode_attention

    counts = collections.Counter()
    with torch.inference_mode():
        for query, key, value, mask, scaling in captured.get("attention", []):
            keep = mask[:, 0, 0, -key.shape[2] :] if mask.dtype == torch.bool else mask[:, 0, 0, -key.shape[2] :] == 0
            padded_fp32 = _decode_attention(query.float(), key.float(), value.float(), mask, scaling)
            padded = _decode_attention(query, key, value, mask, scaling)
            for row in range(query.shape[0]):
                k, v = key[row : row + 1, :, keep[row]], value[row : row + 1, :, keep[row]]
                alone_fp32 = _decode_attention(query[row : row + 1].float(), k.float(), v.float(), None, scaling)
                alone = _decode_attention(query[row : row + 1], k, v, None, scaling)
                counts["rows"] += 1
                counts["differ_fp32"] += int(not torch.equal(alone_fp32, padded_fp32[row : row + 1]))
                counts["differ_rounded"] += int(not torch.equal(alone, padded[row : row + 1]))
    return dict(counts)


VARIANTS = {
    "today": (False, False),  # (a lone stream's shadow row, the decode attention row by row)
    "shadow row": (True, False),
    "batch-invariant (shadow row + attention row by row)": (True, True),
}


class _Variant:
    """Set a variant on `batch` and on the decode attention for the duration of a `with` block (without the row by
    row attention, the whole padded batch goes through `_attend_batch` at once, as it did before)."""

    def __init__(self, batch, name: str):
        self.batch, (self.shadow, self.rowwise) = batch, VARIANTS[name]

    def __enter__(self):
        from grit_hf import attention as attention_module

        self.real = attention_module._decode_attention
        self.batch.invariant = self.shadow
        if not self.rowwise:
            attention_module._decode_attention = attention_module._attend_batch

    def __exit__(self, *exc):
        from grit_hf import attention as attention_module

        attention_module._decode_attention = self.real


def decode_tokens_per_s(model, texts: list[str], steps: int, runs: int, invariant: bool) -> float:
    """Tokens per CPU second of `steps` decode steps of `len(texts)` streams decoded together in a `DecodeBatch` of
    its own, in this thread (one torch thread; the prefills not timed), best of `runs`."""
    from grit_hf.generation.batched import DecodeBatch

    best = float("inf")
    for _ in range(runs):
        streams = _prefilled_streams(model, texts)
        with torch.inference_mode():
            batch = DecodeBatch(model, set(), None)
            batch.invariant = invariant
            batch._join(streams)
            start = time.thread_time()  # this thread's CPU time: other processes on the machine do not count
            for _ in range(steps):
                batch._forward([int(stream.logits.argmax()) for stream in streams])
            best = min(best, time.thread_time() - start)
    return len(texts) * steps / best


def main(argv: list[str] | None = None) -> dict:
    from grit_hf import GritLMForCausalLM
    from grit_hf.folders.resolve import resolve_checkpoint
    from grit_hf.rag import GritRAG

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=32, help="decode steps per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per throughput point (best is kept)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = []
    for dtype in args.dtypes:
        model = GritLMForCausalLM.from_pretrained(resolve_checkpoint("default"), dtype=getattr(torch, dtype)).eval()
        rag = GritRAG(model, batch_decoding=True)
        batch = rag.generator.batch
        texts = prompts(rag, args.streams)
        point = {"dtype": dtype}
        for name in VARIANTS:
            with _Variant(batch, name):
                alone, _ = answers(rag, texts, args.new_tokens, together=False)
                together, _ = answers(rag, texts, args.new_tokens, together=True)
                point[f"differ/{name}"] = sum(a != b for a, b in zip(alone, together))
        for streams in (1, 8):  # round robin over the variants, so that a busy spell of the machine hits them alike
            speeds = collections.defaultdict(float)
            for _ in range(args.runs):
                for name in VARIANTS:
                    with _Variant(batch, name):
                        speed = decode_tokens_per_s(model, texts[:streams], args.steps, 1, batch.invariant)
                    speeds[name] = max(speeds[name], speed)
            for name, speed in speeds.items():
                point[f"tokens_per_s/{streams}/{name}"] = round(speed, 1)
        captured = _step_inputs(model, texts[:8])
        point["linear_rows"] = linear_rows(captured)
        point["attention_rows"] = attention_rows(captured)
        results.append(point)
        print(point, flush=True)
    report = {"environment": environment("transformers"), "command": command_line(__file__, argv), "results": results}
    write_report(args.output, report, _markdown(report, args))
    return report


def _markdown(report: dict, args) -> str:
    env = report["environment"]
    lines = [
        "# Greedy answers decoded together against alone (batched decoding, default model, cpu)",
        "",
        f"{env['date']}; {env['machine']['cpu']} x {env['machine']['cpu_count']}, {args.threads} thread(s); "
        f"torch {env['versions']['torch']}, transformers {env['versions']['transformers']}",
        "",
        f"Command: `OMP_NUM_THREADS={args.threads} {report['command']}`",
        "",
        f"{args.streams} greedy chats of {args.new_tokens} tokens, alone (one stream in the decode batch) and together "
        f"(all at once). Throughput: {args.steps} decode steps of 1 or 8 streams (prefills not timed), tokens per second "
        f"of the decoding thread's CPU time, best of {args.runs}, the variants taking turns.",
        "",
        "| dtype | decode | answers that differ together vs alone | decode tokens/s, 1 stream | 8 streams |",
        "|---|---|---|---|---|",
    ]
    for point in report["results"]:
        for name in VARIANTS:
            lines.append(
                f"| {point['dtype']} | {name} | {point[f'differ/{name}']} / {args.streams} | "
                f"{point[f'tokens_per_s/1/{name}']} | {point[f'tokens_per_s/8/{name}']} |"
            )
    lines += ["", "Rows of one batched decode step (8 streams) that differ from the same rows computed apart:", ""]
    lines += [
        "| dtype | operation | rows | differ from 1-row calls | differ from 2-row calls |",
        "|---|---|---|---|---|",
    ]
    for point in report["results"]:
        for kind, row in point["linear_rows"].items():
            lines.append(
                f"| {point['dtype']} | {kind} | {row['rows']} | {row['differ_from_1_row']} | "
                f"{row['differ_from_2_rows']} |"
            )
        att = point["attention_rows"]
        if att:
            lines.append(
                f"| {point['dtype']} | decode attention, whole padded batch at once (before): fp32 / rounded | {att['rows']} | "
                f"{att['differ_fp32']} / {att['differ_rounded']} | |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
