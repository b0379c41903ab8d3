"""The `grit-hf` command line: convert, embed, generate, demo, and the subcommands other modules add.

A module adds a subcommand by defining `add_cli_command(subparsers)` (adding its parser with
`set_defaults(func=fn)`, where `fn(args) -> int`) and being listed in `_COMMAND_MODULES`. Heavy imports happen
inside the command functions so that `grit-hf --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

__all__ = ["main", "make_parser"]

_COMMAND_MODULES = ("grit_hf.evaluation", "grit_hf.train")


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="GRIT checkpoint folder, or 'default' (SmolLM2-135M).")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu).")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def _load_model(args: argparse.Namespace):
    import torch

    import grit_hf  # noqa: F401  (registers the model type)
    from grit_hf.default_model import resolve_model_path
    from grit_hf.modeling_gritlm import GritLMForCausalLM

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = GritLMForCausalLM.from_pretrained(resolve_model_path(args.model), dtype=getattr(torch, args.dtype))
    return model.to(device).eval()


def _cmd_convert(args: argparse.Namespace) -> int:
    from grit_hf.conversion import convert_checkpoint

    settings = {k: v for k, v in (("query_template", args.query_template), ("pooling_method", args.pooling)) if v}
    output = convert_checkpoint(args.source, args.output, dtype=args.dtype, **settings)
    print(f"Wrote a GRIT checkpoint to {output}")
    return 0


def _read_texts(path: str) -> list[str]:
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with stream:
        lines = [line.rstrip("\n") for line in stream]
    if path.endswith(".jsonl"):
        return [json.loads(line)["text"] for line in lines if line.strip()]
    return [line for line in lines if line.strip()]


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    texts = _read_texts(args.input)
    model = _load_model(args)
    embeddings = model.encode(
        texts,
        instruction=args.instruction,
        batch_size=args.batch_size,
        max_length=args.max_length,
        show_progress_bar=not args.no_progress,
    )
    if args.output.endswith(".npy"):
        np.save(args.output, embeddings)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            for text, vector in zip(texts, embeddings):
                out.write(json.dumps({"text": text, "embedding": vector.tolist()}) + "\n")
    print(f"Embedded {len(texts)} texts -> {args.output} {tuple(embeddings.shape)}", file=sys.stderr)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from grit_hf.generation import chat

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    model = _load_model(args)
    print(chat(model, prompt, max_new_tokens=args.max_new_tokens))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from grit_hf.demo import run_demo

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return run_demo(
        model=args.model,
        question=args.question,
        cache_attention=args.cache_attention,
        show_progress_bar=not args.no_progress,
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grit-hf", description="GRIT models: embed, generate, RAG with caching.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = subparsers.add_parser("convert", help="Turn a stock decoder checkpoint into a GRIT checkpoint.")
    convert.add_argument("source", help="stock checkpoint folder (config.json + *.safetensors)")
    convert.add_argument("output", help="folder to write the GRIT checkpoint to")
    convert.add_argument("--dtype", default="auto", help="dtype of the saved weights (default: as stored)")
    convert.add_argument("--query-template", default=None, help="prefix for instructed texts, with {instruction}")
    convert.add_argument("--pooling", default=None, choices=["mean", "weightedmean", "lasttoken"])
    convert.set_defaults(func=_cmd_convert)

    embed = subparsers.add_parser("embed", help="Embed texts (one per line, or JSONL with 'text') into .npy/.jsonl.")
    embed.add_argument("input", help="text file with one text per line, a .jsonl file, or - for stdin")
    embed.add_argument("-o", "--output", default="embeddings.npy", help=".npy or .jsonl output file")
    embed.add_argument("--instruction", default="", help="task instruction (queries); empty for documents")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--max-length", type=int, default=512)
    embed.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_model_args(embed)
    embed.set_defaults(func=_cmd_embed)

    generate = subparsers.add_parser("generate", help="Answer a prompt (chat template applied).")
    generate.add_argument("prompt", help="the user prompt, or - for stdin")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    _add_model_args(generate)
    generate.set_defaults(func=_cmd_generate)

    demo = subparsers.add_parser("demo", help="Offline RAG demo on the default model: embed, retrieve, answer.")
    demo.add_argument("--model", default="default")
    demo.add_argument("--question", default=None, help="question to answer (default: a built-in one)")
    demo.add_argument(
        "--cache-attention",
        default="causal",
        choices=["causal", "bidirectional"],
        help="states to cache: causal (exact; the default model is not GRIT-trained) or the embedding pass's own",
    )
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_cmd_demo)

    for module_name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.add_cli_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_unknown_args", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown_args = unknown
    start = time.perf_counter()
    code = args.func(args)
    if args.command not in ("demo",):
        print(f"[grit-hf {args.command}] done in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
