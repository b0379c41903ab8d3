from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from grit_hf import GritLMForCausalLM
from grit_hf.cli import main


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "grit_hf.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("convert", "embed", "generate", "demo"):
        assert command in out.stdout


@pytest.mark.parametrize("command", ["convert", "embed", "generate", "demo"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: grit-hf " + command in capsys.readouterr().out


def test_embed_to_npy_and_jsonl(grit_checkpoint, tmp_path):
    texts = ["first text", "second, longer text about Paris", "third"]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n")
    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"))
    expected = model.encode(texts, instruction="Find it")

    npy = tmp_path / "out.npy"
    assert (
        main(
            [
                "embed",
                str(source),
                "-o",
                str(npy),
                "--model",
                str(grit_checkpoint("llama")),
                "--instruction",
                "Find it",
                "--no-progress",
            ]
        )
        == 0
    )
    assert np.abs(np.load(npy) - expected).max() <= 1e-6

    jsonl = tmp_path / "out.jsonl"
    main(
        ["embed", str(source), "-o", str(jsonl), "--model", str(grit_checkpoint("llama")), "--instruction", "Find it"]
    )
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert np.abs(np.array([r["embedding"] for r in rows]) - expected).max() <= 1e-6


def test_generate_prints_the_greedy_answer(grit_checkpoint, capsys):
    from grit_hf.generation import chat

    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"))
    expected = chat(model, "Where is Paris?", max_new_tokens=8)
    assert (
        main(["generate", "Where is Paris?", "--model", str(grit_checkpoint("llama")), "--max-new-tokens", "8"]) == 0
    )
    assert capsys.readouterr().out.strip() == expected


def test_unknown_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "hi", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_chat_rejects_bad_max_new_tokens(grit_checkpoint):
    from grit_hf.generation import chat

    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"))
    with pytest.raises(ValueError, match="`max_new_tokens`"):
        chat(model, "hi", max_new_tokens=0)
