"""`grit-hf convert`, `embed`, `generate` and `demo`."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parsers", "add_model_arguments", "add_quantization_argument", "add_recompute_argument"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """`--model`, `--revision`, `--device`, `--dtype`, `--quantization`, shared by every command that loads a model."""
    parser.add_argument(
        "--model", default="default", help="GRIT or stock checkpoint: a folder, a Hub name, or 'default'"
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (default auto: bfloat16 on a CPU with native bf16, else float32; the checkpoint's on GPUs)",
    )
    add_quantization_argument(parser)


def add_quantization_argument(parser: argparse.ArgumentParser) -> None:
    """`--quantization` (`grit_hf.load_model`'s `quantization`)."""
    from ..quantization import QUANTIZATIONS

    parser.add_argument(
        "--quantization",
        default=None,
        choices=list(QUANTIZATIONS),
        help="quantized weights (torchao): int4 (CPU; fastest decoding) or int8; default: the weights as saved "
        "(the README says which settings are exact and which approximate)",
    )


def _recompute_setting(text: str) -> str:
    """`--recompute` checked when the command line is read (a usage error, not a traceback after loading)."""
    from ..generation.plan import Recompute

    try:
        Recompute.parse(text)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_recompute_argument(parser, several: bool = False) -> None:
    """`--recompute`: selective recomputation of bidirectional cached states (`grit_hf.generation.recompute`);
    `several`: a list of settings, each a run (`grit-hf eval-rag`)."""
    parser.add_argument(
        "--recompute",
        nargs="+" if several else None,
        type=_recompute_setting,
        default=None,
        help="selective recomputation of bidirectional cached states, RULE:AMOUNT (deviation, head, tail, ends, random; "
        "e.g. head:0.1 or head:8)" + (", each a run," if several else "") + " or none (default: the checkpoint's "
        "cache_recompute)",
    )


def load_model_from_args(args: argparse.Namespace):
    from ..checkpoint.loading import load_model

    return load_model(
        args.model, device=args.device, dtype=args.dtype, revision=args.revision, quantization=args.quantization
    )


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..checkpoint.conversion import convert_checkpoint, export_stock_sentence_transformer

    settings = {k: v for k, v in (("query_template", args.query_template), ("pooling_method", args.pooling)) if v}
    if args.document_template is not None:
        settings["document_template"] = args.document_template
    convert = export_stock_sentence_transformer if args.stock_config else convert_checkpoint
    output = convert(args.source, args.output, dtype=args.dtype, revision=args.revision, **settings)
    kind = "stock-config GRIT export (plain sentence-transformers)" if args.stock_config else "GRIT checkpoint"
    print(f"Wrote a {kind} to {output}")
    return 0


def _read_texts(path: str) -> list[str]:
    """The texts of a `.jsonl` file (`{"text"}` records), or the non-empty lines of a text file (`-`: stdin)."""
    if path.endswith(".jsonl"):
        from ..records.files import read_records

        texts = []
        try:
            for where, record, _ in read_records(path, "input"):
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise ValueError(f"{where}: each line must be an object with a string 'text'.")
                texts.append(record["text"])
        except ValueError as error:
            raise SystemExit(f"grit-hf embed: {error}") from None
        return texts
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with stream:
        return [line.rstrip("\n") for line in stream if line.strip()]


def _cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    texts = _read_texts(args.input)
    model = load_model_from_args(args)
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
    from ..generation.chat import chat

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    print(chat(load_model_from_args(args), prompt, max_new_tokens=args.max_new_tokens))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return run_demo(
        model=args.model,
        question=args.question,
        cache_attention=args.cache_attention,
        show_progress_bar=not args.no_progress,
        dtype=args.dtype,
        quantization=args.quantization,
        recompute=args.recompute,
    )


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `convert`, `embed`, `generate` and `demo`."""
    convert = subparsers.add_parser("convert", help="Turn a stock decoder checkpoint into a GRIT checkpoint.")
    convert.add_argument(
        "source", help="stock or GRIT checkpoint: a folder (config.json + *.safetensors) or a Hub name (ORG/NAME)"
    )
    convert.add_argument("output", help="folder to write the GRIT checkpoint to")
    convert.add_argument("--revision", default=None, help="Hub revision of SOURCE")
    convert.add_argument("--dtype", default="auto", help="dtype of the saved weights (default: as stored)")
    convert.add_argument("--query-template", default=None, help="prefix for instructed texts, with {instruction}")
    convert.add_argument("--document-template", default=None, help="prefix for texts without an instruction")
    convert.add_argument("--pooling", default=None, choices=["mean", "weightedmean", "lasttoken"])
    convert.add_argument(
        "--stock-config",
        action="store_true",
        help="write the stock family's config (is_causal: true) instead of grit-hf's, with sentence-transformers "
        "files that load it bidirectionally: plain SentenceTransformer(OUTPUT) embeds the GRIT way without grit-hf; "
        "transformers' Auto classes load the stock causal model",
    )
    convert.set_defaults(func=_cmd_convert)

    embed = subparsers.add_parser("embed", help="Embed texts (one per line, or JSONL with 'text') into .npy/.jsonl.")
    embed.add_argument("input", help="text file with one text per line, a .jsonl file, or - for stdin")
    embed.add_argument("-o", "--output", default="embeddings.npy", help=".npy or .jsonl output file")
    embed.add_argument("--instruction", default="", help="task instruction (queries); empty for documents")
    embed.add_argument("--batch-size", type=int, default=32)
    embed.add_argument("--max-length", type=int, default=512)
    embed.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_model_arguments(embed)
    embed.set_defaults(func=_cmd_embed)

    generate = subparsers.add_parser("generate", help="Answer a prompt (chat template applied).")
    generate.add_argument("prompt", help="the user prompt, or - for stdin")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    add_model_arguments(generate)
    generate.set_defaults(func=_cmd_generate)

    demo = subparsers.add_parser("demo", help="Offline RAG demo on the default model: embed, retrieve, answer.")
    demo.add_argument("--model", default="default", help="a folder, a Hub name or 'default'")
    demo.add_argument("--question", default=None, help="question to answer (default: a built-in one)")
    demo.add_argument(
        "--cache-attention",
        default=None,
        choices=["causal", "bidirectional"],
        help="states to cache (default: the checkpoint's: bidirectional if it was trained for cached generation)",
    )
    demo.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    demo.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="weights dtype")
    add_quantization_argument(demo)
    add_recompute_argument(demo)
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(func=_cmd_demo)
