from __future__ import annotations

import json
import re
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


def test_embed_to_npy_and_jsonl(fp32_by_default, grit_checkpoint, tmp_path):
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


def test_generate_prints_the_stock_models_greedy_answer(stock_checkpoint, grit_checkpoint, capsys):
    """Against the plain transformers model and `generate`, with the checkpoint's chat template."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(grit_checkpoint("llama"))
    stock = LlamaForCausalLM.from_pretrained(stock_checkpoint("llama")).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Where is Paris?"}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    output = stock.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert (
        main(["generate", "Where is Paris?", "--model", str(grit_checkpoint("llama")), "--max-new-tokens", "8"]) == 0
    )
    assert capsys.readouterr().out.strip() == expected


def test_generate_loads_the_model_with_the_quantization_flag(grit_checkpoint, monkeypatch, capsys):
    pytest.importorskip("torchao")
    from grit_hf.quantization import model_quantization

    seen = []
    chat_module = sys.modules["grit_hf.generation.chat"]  # the package exports the function under the same name
    monkeypatch.setattr(chat_module, "chat", lambda model, *a, **k: seen.append(model_quantization(model)))
    argv = ["generate", "hi", "--model", str(grit_checkpoint("llama")), "--dtype", "bfloat16", "--quantization"]
    assert main([*argv, "int8"]) == 0 and seen == ["int8"]
    with pytest.raises(SystemExit):
        main([*argv, "int2"])
    assert "invalid choice: 'int2'" in capsys.readouterr().err


def test_unknown_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "hi", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_chat_rejects_bad_max_new_tokens(grit_checkpoint):
    from grit_hf.generation.chat import chat

    model = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama"))
    with pytest.raises(ValueError, match="`max_new_tokens`"):
        chat(model, "hi", max_new_tokens=0)


def test_embed_reads_jsonl_input_and_names_a_bad_line(fp32_by_default, grit_checkpoint, tmp_path):
    texts = ["first text", 'with "quotes"\nand a newline', "third"]
    source = tmp_path / "texts.jsonl"
    source.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(texts)) + "\n")
    out = tmp_path / "out.npy"
    assert main(["embed", str(source), "-o", str(out), "--model", str(grit_checkpoint("llama")), "--no-progress"]) == 0
    expected = GritLMForCausalLM.from_pretrained(grit_checkpoint("llama")).encode(texts)
    assert np.abs(np.load(out) - expected).max() <= 1e-6
    source.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(SystemExit, match=r"texts.jsonl:2: each line must be an object with a string 'text'"):
        main(["embed", str(source), "-o", str(out), "--model", str(grit_checkpoint("llama"))])
    missing = tmp_path / "missing.txt"
    with pytest.raises(SystemExit, match=rf"grit-hf embed: No such file or directory: {re.escape(str(missing))}$"):
        main(["embed", str(missing), "-o", str(out), "--model", str(grit_checkpoint("llama"))])


def test_convert_options_from_the_command_line(stock_checkpoint, tmp_path, capsys):
    from grit_hf import GritLMConfig

    out = tmp_path / "converted"
    argv = ["convert", str(stock_checkpoint("llama")), str(out), "--query-template", "Q: {instruction} | "]
    argv += ["--document-template", "D: ", "--pooling", "lasttoken", "--dtype", "bfloat16"]
    assert main(argv) == 0
    config = GritLMConfig.from_pretrained(out)
    assert (config.query_template, config.document_template, config.pooling_method) == (
        "Q: {instruction} | ",
        "D: ",
        "lasttoken",
    )
    model = GritLMForCausalLM.from_pretrained(out)
    assert model.dtype == __import__("torch").bfloat16
    assert "Wrote a GRIT checkpoint" in capsys.readouterr().out
    with pytest.raises(ValueError, match="must contain '\\{instruction\\}'"):
        main(["convert", str(stock_checkpoint("llama")), str(tmp_path / "bad"), "--query-template", "no placeholder"])


@pytest.mark.parametrize("command", [["demo"], ["eval-rag", "--data", "x"], ["serve"]])
def test_a_bad_recompute_setting_is_a_usage_error(command, capsys):
    """`--recompute` is checked when the command line is read: exit 2 with the setting's error, before any model loads."""
    with pytest.raises(SystemExit) as raised:
        main([*command, "--recompute", "ends:2.0"])
    assert raised.value.code == 2
    assert "argument --recompute: Recompute `amount` must be a float in [0, 1]" in capsys.readouterr().err
