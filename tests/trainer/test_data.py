from __future__ import annotations

import datasets
import pytest
from transformers import AutoTokenizer

from grit_hf.trainer.data import (
    EMBEDDING_COLUMNS,
    load_embedding_dataset,
    load_generative_dataset,
    normalize_generative_record,
    tokenize_generative_record,
)

from .helpers import write_jsonl


def test_reference_embedding_format(tmp_path):
    path = write_jsonl(
        tmp_path / "emb.jsonl",
        [
            {"query": ["Find the doc", "paris"], "pos": [["", "Paris is in France."]], "neg": ["Berlin."]},
            {"query": "plain query", "pos": "one positive", "source": "other"},
        ],
    )
    rows = load_embedding_dataset(path)
    assert tuple(rows.column_names) == EMBEDDING_COLUMNS
    assert rows[0] == {
        "query_instruction": "Find the doc",
        "query": "paris",
        "pos": ["Paris is in France."],
        "pos_instructions": [""],
        "neg": ["Berlin."],
        "neg_instructions": [""],
        "source": "emb",
    }
    assert rows[1]["query_instruction"] == "" and rows[1]["pos"] == ["one positive"] and rows[1]["neg"] == []
    assert rows[1]["source"] == "other"


def test_retrieval_folder_manpages(shared_data):
    rows = load_embedding_dataset(shared_data / "manpages" / "train")
    assert len(rows) == 6589
    assert rows[0]["query_instruction"].startswith("Given a one-line summary from a Unix manual page")
    assert rows[0]["pos_instructions"] == [""]  # documents get no instruction (task.json)
    assert set(rows["source"]) == {"manpages/train"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "q", "pos": ["p"]', "invalid JSON"),
        ('{"query": "q"}', "needs `query` and `pos`"),
        ('{"query": "q", "pos": []}', "at least one positive"),
        ('{"query": ["a", "b", "c"], "pos": ["p"]}', "`query` must be a str or an"),
        ('{"query": "q", "pos": [1]}', r"`pos\[0\]` must be"),
    ],
)
def test_malformed_embedding_record_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"query": "q", "pos": ["p"]}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as error:
        load_embedding_dataset(path)
    assert f"{path}:3" in str(error.value)


def test_malformed_generative_record_names_file_and_line(tiny_grit, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_grit)
    path = tmp_path / "gen.jsonl"
    path.write_text('{"text": "fine"}\n{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(ValueError, match="no assistant turn") as error:
        load_generative_dataset(path, tokenizer)
    assert f"{path}:2" in str(error.value)
    path.write_text('{"answer": "x"}\n')
    with pytest.raises(ValueError, match=f"{path}:1: a generative record needs"):
        load_generative_dataset(path, tokenizer)


def _trained_text(tokenizer, row) -> str:
    return tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])


@pytest.mark.parametrize(
    "record",
    [
        {"text": ["What is Paris?", "The capital of France."]},
        {
            "messages": [
                {"role": "user", "content": "What is Paris?"},
                {"role": "assistant", "content": "The capital of France."},
            ]
        },
        {"prompt": "What is Paris?", "completion": "The capital of France."},
        {
            "prompt": [{"role": "user", "content": "What is Paris?"}],
            "completion": [{"role": "assistant", "content": "The capital of France."}],
        },
    ],
)
def test_chat_formats_train_on_the_answer_only(tiny_grit, record):
    tokenizer = AutoTokenizer.from_pretrained(tiny_grit)  # GritLM-7B's Tülu template (saved by the conversion)
    row = tokenize_generative_record(tokenizer, normalize_generative_record(record, "x"))
    assert _trained_text(tokenizer, row) == "The capital of France.</s>\n"
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is Paris?"}, {"role": "assistant", "content": "The capital of France."}],
        tokenize=False,
    )
    assert tokenizer.decode(row["input_ids"]) == full


def test_multi_turn_trains_on_every_assistant_turn(tiny_grit):
    tokenizer = AutoTokenizer.from_pretrained(tiny_grit)
    row = tokenize_generative_record(tokenizer, normalize_generative_record({"text": ["a", "b", "c", "d"]}, "x"))
    assert _trained_text(tokenizer, row) == "b</s>\nd</s>\n"


def test_plain_text_trains_on_every_token(tiny_grit):
    tokenizer = AutoTokenizer.from_pretrained(tiny_grit)
    row = tokenize_generative_record(tokenizer, normalize_generative_record({"text": "Paris."}, "x"))
    assert row["labels"] == row["input_ids"] and row["input_ids"][-1] == tokenizer.eos_token_id


def test_chatml_template_of_the_default_model(default_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    record = normalize_generative_record({"prompt": "Hi", "completion": "Hello there."}, "x")
    row = tokenize_generative_record(tokenizer, record)
    assert _trained_text(tokenizer, row) == "Hello there.<|im_end|>\n"


def test_template_that_does_not_render_incrementally_is_rejected(tiny_grit):
    tokenizer = AutoTokenizer.from_pretrained(tiny_grit)
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}#{% endif %}"
    record = normalize_generative_record({"text": ["a", "b"]}, "x")
    tokenizer.chat_template = template
    with pytest.raises(ValueError, match="file:7: the chat template does not render conversations incrementally"):
        tokenize_generative_record(tokenizer, record, where="file:7")


def test_datasets_sources(tiny_grit, tiny_data, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_grit)
    chats = datasets.Dataset.from_list(
        [{"prompt": "Hi", "completion": "Hello."}, {"prompt": "Yo", "completion": "Hey."}]
    )
    from_object = load_generative_dataset(chats, tokenizer)
    assert set(from_object.column_names) == {"input_ids", "labels"} and len(from_object) == 2
    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"query": "q", "pos": ["p"]}]).save_to_disk(str(saved))
    assert load_embedding_dataset(saved)["pos"] == [["p"]]
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"query": "q1", "pos": ["p1"]}])
    write_jsonl(folder / "b.jsonl", [{"query": "q2", "pos": ["p2"]}])
    assert load_embedding_dataset(folder)["source"] == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        load_embedding_dataset(str(tmp_path / "missing.jsonl"))
