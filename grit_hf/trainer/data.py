"""Reading GRIT training data: embedding and generative examples from files, folders and Hugging Face datasets.

Embedding examples (one per query), any of:
- the reference JSONL: `{"query": str | [instruction, text], "pos": [str | [instruction, text]], "neg": [...]}`
  (`neg` optional; an optional `"source"` names the dataset for same-dataset in-batch negatives);
- a retrieval folder: `queries.jsonl` + `corpus.jsonl` ({"id", "text"}), `qrels.tsv` (query id, doc id, relevance)
  and an optional `task.json` ({"query_instruction", "doc_instruction"}), e.g. `/work/shared/data/manpages/train`.

Generative examples, any of:
- `{"text": str}` (plain text, loss on every token) or `{"text": [user, assistant, user, assistant, ...]}`;
- `{"messages": [{"role", "content"}, ...]}` (chat);
- `{"prompt": str | messages, "completion": str | messages}`.
Chat examples are rendered with the tokenizer's chat template (else the checkpoint's) and trained on the assistant
turns only (their end-of-turn tokens included).

A source is a `.jsonl`/`.jsonl.gz`/`.json` file, a folder of them (or a retrieval folder, or a folder saved with
`Dataset.save_to_disk`), a `datasets.Dataset`, or a dataset name for `datasets.load_dataset`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from ..records.files import Record, is_saved_dataset, iter_records
from ..records.retrieval import is_retrieval_folder, load_retrieval_data

logger = logging.get_logger(__name__)

__all__ = [
    "EMBEDDING_COLUMNS",
    "load_embedding_dataset",
    "load_generative_dataset",
    "normalize_embedding_record",
    "normalize_generative_record",
    "tokenize_generative_record",
    "read_retrieval_folder",
]

EMBEDDING_COLUMNS = ("query_instruction", "query", "pos", "pos_instructions", "neg", "neg_instructions", "source")


# -- embedding ------------------------------------------------------------------------------------------------------
def _pair(value: Any, where: str, field: str) -> tuple[str, str]:
    if isinstance(value, str):
        return "", value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[0], value[1]
    raise ValueError(f"{where}: `{field}` must be a str or an [instruction, text] pair of str, got {value!r:.80}.")


def normalize_embedding_record(record: Any, where: str, source: str) -> dict:
    """One reference-format embedding record as a row with the columns `EMBEDDING_COLUMNS`."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: an embedding record must be a JSON object, got {type(record).__name__}.")
    if "query" not in record or "pos" not in record:
        raise ValueError(f"{where}: an embedding record needs `query` and `pos`, got keys {sorted(record)}.")
    query_instruction, query = _pair(record["query"], where, "query")
    passages = {}
    for field in ("pos", "neg"):
        value = record.get(field) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError(f"{where}: `{field}` must be a list, got {type(value).__name__}.")
        passages[field] = [_pair(item, where, f"{field}[{i}]") for i, item in enumerate(value)]
    if not passages["pos"]:
        raise ValueError(f"{where}: `pos` must hold at least one positive.")
    return {
        "query_instruction": query_instruction,
        "query": query,
        "pos": [text for _, text in passages["pos"]],
        "pos_instructions": [instruction for instruction, _ in passages["pos"]],
        "neg": [text for _, text in passages["neg"]],
        "neg_instructions": [instruction for instruction, _ in passages["neg"]],
        "source": str(record.get("source") or source),
    }


def read_retrieval_folder(folder: str | os.PathLike) -> Iterator[Record]:
    """Yield reference-format records from a retrieval folder (read by `grit_hf.records.retrieval.load_retrieval_data`):
    each judged query with the task's query instruction, its relevant documents (relevance > 0) as positives."""
    folder = Path(folder)
    data = load_retrieval_data(folder)
    source = f"{folder.parent.name}/{folder.name}"
    for query_id, judged in data.qrels.items():
        positives = [doc_id for doc_id, relevance in judged.items() if relevance > 0]
        unknown = [doc_id for doc_id in positives if doc_id not in data.corpus]
        if unknown:
            raise ValueError(f"{folder / 'qrels.tsv'}: query {query_id!r} names unknown document ids {unknown[:3]}.")
        if positives:
            record = {
                "query": [data.query_instruction, data.queries[query_id]],
                "pos": [[data.doc_instruction, data.corpus[doc_id]] for doc_id in positives],
            }
            yield Record(f"{folder}:{query_id}", record, source)


def load_embedding_dataset(source: Any, split: str = "train"):
    """Load embedding examples (see the module docstring) into a `datasets.Dataset` with `EMBEDDING_COLUMNS`."""
    import datasets

    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if path is not None and is_retrieval_folder(path):
        records: Iterable = read_retrieval_folder(path)
    elif path is not None and path.is_dir() and not is_saved_dataset(path):
        subsets = sorted(p for p in path.iterdir() if is_retrieval_folder(p))
        records = [r for p in subsets for r in read_retrieval_folder(p)]
        if not subsets:
            records = iter_records(source, split, "embedding")
    else:
        records = iter_records(source, split, "embedding")
    rows = [normalize_embedding_record(record, where, name) for where, record, name in records]
    if not rows:
        raise ValueError(f"The embedding dataset {source!r:.100} holds no examples.")
    logger.info(f"Loaded {len(rows)} embedding examples from {source!r:.100}.")
    return datasets.Dataset.from_dict({column: [row[column] for row in rows] for column in EMBEDDING_COLUMNS})


# -- generative -----------------------------------------------------------------------------------------------------
def _as_messages(value: Any, where: str, field: str, default_role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f'{where}: `{field}` must be a str or a list of {{"role", "content"}} messages.')


def normalize_generative_record(record: Any, where: str) -> dict:
    """One generative record as `{"messages": [...]}` (chat; loss on assistant turns) or `{"text": str}`."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a generative record must be a JSON object, got {type(record).__name__}.")
    if "messages" in record:
        messages = _as_messages(record["messages"], where, "messages", "user")
    elif "prompt" in record and "completion" in record:
        messages = _as_messages(record["prompt"], where, "prompt", "user")
        messages += _as_messages(record["completion"], where, "completion", "assistant")
    elif "text" in record and isinstance(record["text"], str):
        return {"text": record["text"]}
    elif "text" in record and isinstance(record["text"], list):
        turns = record["text"]
        if not turns or not all(isinstance(turn, str) for turn in turns):
            raise ValueError(f"{where}: `text` must be a str or a non-empty list of str [user, assistant, ...].")
        messages = [{"role": ("user", "assistant")[i % 2], "content": turn} for i, turn in enumerate(turns)]
    else:
        raise ValueError(
            f"{where}: a generative record needs `text`, `messages`, or `prompt` and `completion`; got keys "
            f"{sorted(record)}."
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: the conversation has no assistant turn to train on.")
    return {"messages": messages}


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], template: str, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def tokenize_generative_record(
    tokenizer: PreTrainedTokenizerBase, record: dict, chat_template: str | None = None, where: str = "record"
) -> dict[str, list[int]]:
    """`{"input_ids", "labels"}` of a normalized generative record; labels are -100 outside the trained tokens.

    Chats are tokenized piece by piece (prompt, answer, prompt, answer, ...), each piece as the template renders it,
    so an answer starts on a token boundary exactly as it does when the model generates it.

    Why not TRL's completion-only masking (`assistant_only_loss`): it needs a chat template that marks assistant
    turns with `{% generation %}` blocks, which SmolLM2's, GritLM-7B's Tülu template and most stock templates lack.
    Rendering prefixes works with any template that renders conversations incrementally, and checks that it does.
    """
    if "text" in record:
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        return {"input_ids": ids, "labels": list(ids)}
    template = tokenizer.chat_template or chat_template
    if template is None:
        raise ValueError("The tokenizer has no chat template and the checkpoint sets no `chat_template`.")
    messages = record["messages"]
    input_ids: list[int] = []
    labels: list[int] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], template, True) if index else ""
        full = _render(tokenizer, messages[: index + 1], template, False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ValueError(
                f"{where}: the chat template does not render conversations incrementally (a prefix of the "
                "conversation renders differently on its own), so assistant tokens cannot be located."
            )
        for piece, trained in ((prompt[len(done) :], False), (full[len(prompt) :], True)):
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"] if piece else []
            input_ids += ids
            labels += ids if trained else [-100] * len(ids)
        done = full
    rest = _render(tokenizer, messages, template, False)[len(done) :]
    if rest:
        ids = tokenizer(rest, add_special_tokens=False)["input_ids"]
        input_ids += ids
        labels += [-100] * len(ids)
    return {"input_ids": input_ids, "labels": labels}


def load_generative_dataset(
    source: Any, tokenizer: PreTrainedTokenizerBase, chat_template: str | None = None, split: str = "train"
):
    """Load generative examples (see the module docstring) as a tokenized `datasets.Dataset` of `input_ids` and
    `labels`, ready for `SFTTrainer`'s truncation and packing. A `Dataset` that already has `input_ids` is kept."""
    import datasets

    if isinstance(source, datasets.Dataset) and "input_ids" in source.column_names:
        return source
    rows = []
    for where, record, _ in iter_records(source, split, "generative"):
        normalized = normalize_generative_record(record, where)
        rows.append(tokenize_generative_record(tokenizer, normalized, chat_template, where))
    if not rows:
        raise ValueError(f"The generative dataset {source!r:.100} holds no examples.")
    logger.info(f"Loaded {len(rows)} generative examples from {source!r:.100}.")
    return datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in ("input_ids", "labels")})
