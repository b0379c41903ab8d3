"""Every GRIT checkpoint is a sentence-transformers model: same numbers as `encode` and the reference, ST features,
remote-code loading in a fresh process, and the folder still generates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import PARITY
from torch.testing import assert_close
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import grit_hf
from grit_hf import GritLMForCausalLM, GritLMModel, convert_checkpoint
from grit_hf.folders.sentence_transformers import (
    SHIM_MODULE,
    TASK_INSTRUCTIONS,
    add_sentence_transformers_files,
    grit_prompt,
    sentence_transformers_prompts,
)

st_module = pytest.importorskip("sentence_transformers")
SentenceTransformer = st_module.SentenceTransformer

TEXTS = [
    "The capital of France is Paris.",
    "Berlin",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen, mostly in the leaves of plants.",
    "list directory contents",
    "",
]
INSTRUCTION = "Given a one-line summary, retrieve the manual page it summarizes"
REPO_ROOT = Path(grit_hf.__file__).resolve().parent.parent


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.fixture(scope="module")
def llama_st(grit_checkpoint):
    return SentenceTransformer(str(grit_checkpoint("llama")), device="cpu")


@pytest.fixture(scope="module")
def llama_model(grit_checkpoint):
    return GritLMModel.from_pretrained(grit_checkpoint("llama")).eval()


# -- files ---------------------------------------------------------------------------------------------------------
def test_checkpoint_has_stock_modules_and_prompts(grit_checkpoint):
    path = grit_checkpoint("llama")
    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"] for m in modules] == [
        "sentence_transformers.base.modules.transformer.Transformer",
        "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        "sentence_transformers.base.modules.normalize.Normalize",
    ]
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling == {"embedding_dimension": 64, "pooling_mode": "mean", "include_prompt": False}
    bert = json.loads((path / "sentence_bert_config.json").read_text())
    assert set(bert["modality_config"]) == {"text"} and bert["max_seq_length"] == 512
    st_config = json.loads((path / "config_sentence_transformers.json").read_text())
    assert st_config["similarity_fn_name"] == "cosine" and st_config["default_prompt_name"] == "document"
    prompts = st_config["prompts"]
    assert prompts["document"] == "<|embed|>\n"
    assert prompts["query"] == "<|user|>\nGiven a question, retrieve passages that answer the question\n<|embed|>\n"
    assert set(TASK_INSTRUCTIONS) <= set(prompts)
    config = json.loads((path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == f"{SHIM_MODULE}.GritLMModel"
    shim = (path / f"{SHIM_MODULE}.py").read_text()
    assert "import grit_hf" in shim and "def " not in shim  # imports grit_hf, copies no model code


MODULE_FILES = ("modules.json", "1_Pooling/config.json", "2_Normalize/config.json")


def test_sentence_transformers_writes_its_module_files_and_the_fallback_writes_the_same(
    grit_checkpoint, tmp_path, monkeypatch
):
    """With sentence-transformers installed its module classes write their own configs; without it grit-hf writes
    them itself. Both give the same bytes, and so does `SentenceTransformer.save` of the loaded folder."""
    source = grit_checkpoint("llama")
    native, fallback, saved = tmp_path / "native", tmp_path / "fallback", tmp_path / "saved"
    shutil.copytree(source, native)
    shutil.copytree(source, fallback)
    for name in MODULE_FILES:
        (native / name).unlink()
        (fallback / name).unlink()
    add_sentence_transformers_files(native)
    with monkeypatch.context() as patch:
        for name in [name for name in sys.modules if name.startswith("sentence_transformers")]:
            patch.setitem(sys.modules, name, None)  # as if it were not installed: its imports raise ImportError
        with pytest.raises(ImportError):
            import sentence_transformers.base.modules  # noqa: F401
        add_sentence_transformers_files(fallback)
    SentenceTransformer(str(source), device="cpu").save(str(saved))
    for name in MODULE_FILES:
        assert (native / name).read_bytes() == (fallback / name).read_bytes(), name
        assert (saved / name).read_bytes() == (fallback / name).read_bytes(), name
    assert not list(native.glob(".*.tmp")), "staging folders left behind"


def test_prompts_follow_the_checkpoints_own_templates(stock_checkpoint, tmp_path):
    path = convert_checkpoint(
        stock_checkpoint("qwen2"),
        tmp_path / "chatml",
        query_template="<|im_start|>user\n{instruction}<|im_end|>\n<|embed|>\n",
        document_template="<|embed|>\n",
        default_query_instruction="Find the answer",
    )
    prompts = json.loads((path / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["query"] == "<|im_start|>user\nFind the answer<|im_end|>\n<|embed|>\n"
    assert prompts["sts"] == "<|im_start|>user\nRetrieve semantically similar text<|im_end|>\n<|embed|>\n"
    model = GritLMModel.from_pretrained(path)
    st = SentenceTransformer(str(path), device="cpu")
    assert _max_diff(st.encode_query(TEXTS), model.encode(TEXTS, instruction="Find the answer")) <= PARITY


def test_one_liner_converts_an_old_folder_once_into_the_cache(grit_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("GRIT_HF_HOME", str(tmp_path / "home"))
    path = tmp_path / "old"
    shutil.copytree(grit_checkpoint("llama"), path)
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "gritlm_shim.py"):
        (path / name).unlink()
    shutil.rmtree(path / "1_Pooling")
    config = json.loads((path / "config.json").read_text())
    del config["auto_map"]
    (path / "config.json").write_text(json.dumps(config))
    st = grit_hf.sentence_transformer(path, device="cpu")  # a converted copy, not the user's folder
    assert not (path / "modules.json").exists()
    converted = grit_hf.grit_checkpoint_folder(path)
    assert converted.parent == tmp_path / "home" / "converted" and (converted / f"{SHIM_MODULE}.py").is_file()
    assert _max_diff(st.encode(TEXTS), GritLMModel.from_pretrained(path).encode(TEXTS)) <= PARITY
    assert grit_hf.sentence_transformer(converted, device="cpu")[0].auto_model.name_or_path == str(converted)


def test_add_files_rejects_bad_input(stock_checkpoint, grit_checkpoint):
    with pytest.raises(ValueError, match="not a GRIT one"):
        add_sentence_transformers_files(stock_checkpoint("llama"))
    with pytest.raises(ValueError, match="max_seq_length"):
        add_sentence_transformers_files(grit_checkpoint("llama"), max_seq_length=0)
    with pytest.raises(TypeError, match="task_instructions"):
        sentence_transformers_prompts(GritLMModel.config_class(), task_instructions={"sts": 3})
    with pytest.raises(ValueError, match="query"):
        sentence_transformers_prompts(GritLMModel.config_class(), task_instructions={"query": "x"})
    with pytest.raises(TypeError, match="config"):
        grit_prompt("not a config", "x")
    with pytest.raises(ValueError, match="output_dir"):
        add_sentence_transformers_files(Path("/nonexistent/folder"))


def test_weightedmean_checkpoint_gets_no_st_files(stock_checkpoint, tmp_path, caplog):
    path = convert_checkpoint(stock_checkpoint("llama"), tmp_path / "wm", pooling_method="weightedmean")
    assert not (path / "modules.json").exists()
    assert (path / f"{SHIM_MODULE}.py").exists()  # remote-code loading still works


# -- same numbers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_matches_encode_and_reference_gritlm(family, stock_checkpoint, grit_checkpoint):
    gritlm = pytest.importorskip("gritlm")
    path = grit_checkpoint(family)
    st = SentenceTransformer(str(path), device="cpu")
    model = GritLMModel.from_pretrained(path)
    reference = gritlm.GritLM(str(stock_checkpoint(family)), attn="bbcc", device="cpu")
    texts = TEXTS[:-1]  # the reference divides by zero on the empty text
    ref_queries = reference.encode(texts, instruction="<|user|>\n" + INSTRUCTION + "\n<|embed|>\n")
    ref_documents = reference.encode(texts, instruction="<|embed|>\n")
    ref_default_queries = reference.encode(texts, instruction=st.prompts["query"])

    queries = st.encode(texts, prompt=grit_prompt(model, INSTRUCTION))
    assert queries.dtype == np.float32
    assert _max_diff(queries, model.encode(texts, instruction=INSTRUCTION)) <= PARITY
    assert _max_diff(queries, ref_queries) <= PARITY
    assert _max_diff(st.encode_document(texts), ref_documents) <= PARITY
    assert _max_diff(st.encode(texts), ref_documents) <= PARITY  # default prompt: document
    assert _max_diff(st.encode_query(texts), ref_default_queries) <= PARITY
    assert (
        _max_diff(st.encode_query(texts), model.encode(texts, instruction=model.config.default_query_instruction))
        <= PARITY
    )
    assert (
        _max_diff(st.encode(texts, prompt_name="sts"), model.encode(texts, instruction=TASK_INSTRUCTIONS["sts"]))
        <= PARITY
    )


def test_empty_text_and_batches(llama_st, llama_model):
    one_by_one = np.stack([llama_st.encode(text) for text in TEXTS])
    batched = llama_st.encode(TEXTS, batch_size=2)
    assert _max_diff(one_by_one, batched) <= PARITY
    assert _max_diff(batched, llama_model.encode(TEXTS)) <= PARITY
    assert np.abs(batched[-1]).max() == 0.0  # the empty text has no text tokens: zero vector, as encode()


def test_bf16_model_gives_fp32_embeddings(grit_checkpoint):
    path = grit_checkpoint("llama")
    st = SentenceTransformer(str(path), device="cpu", model_kwargs={"dtype": torch.bfloat16})
    assert st[0].auto_model.dtype == torch.bfloat16
    # one text per batch on both sides: in bf16, how texts are grouped and padded changes the rounding
    out = st.encode_query(TEXTS[:-1], convert_to_tensor=True, batch_size=1)
    assert out.dtype == torch.float32
    bf16 = GritLMModel.from_pretrained(path, dtype=torch.bfloat16)
    same = bf16.encode(
        TEXTS[:-1], instruction=bf16.config.default_query_instruction, convert_to_tensor=True, batch_size=1
    )
    assert_close(out, same, rtol=0, atol=1e-5)
    fp32 = GritLMModel.from_pretrained(path).encode(TEXTS[:-1], instruction=bf16.config.default_query_instruction)
    assert (out.numpy() * fp32).sum(axis=1).min() >= 0.99


def test_causal_embedding_checkpoint(stock_checkpoint, tmp_path):
    path = convert_checkpoint(stock_checkpoint("llama"), tmp_path / "causal", embedding_attention="causal")
    st = SentenceTransformer(str(path), device="cpu")
    model = GritLMModel.from_pretrained(path)
    causal = model.encode(TEXTS)
    assert _max_diff(st.encode(TEXTS), causal) <= PARITY
    assert _max_diff(causal, model.encode(TEXTS, is_causal=False)) > 1e-3


# -- the folder still generates ------------------------------------------------------------------------------------
def _logits(model, tokenizer, text="Paris is the capital of France"):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_st_save_round_trip_keeps_lm_head_and_generation(stock_checkpoint, llama_st, tmp_path):
    out = tmp_path / "saved"
    llama_st.save(str(out))
    reloaded = SentenceTransformer(str(out), device="cpu")
    assert reloaded.prompts == llama_st.prompts and reloaded.default_prompt_name == "document"
    assert reloaded.similarity_fn_name == "cosine"
    assert _max_diff(reloaded.encode_query(TEXTS), llama_st.encode_query(TEXTS)) == 0.0
    assert (out / f"{SHIM_MODULE}.py").is_file() and (out / "generation_config.json").is_file()

    stock = LlamaForCausalLM.from_pretrained(stock_checkpoint("llama"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    generator = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(generator, GritLMForCausalLM)
    assert_close(_logits(generator, tokenizer), _logits(stock, tokenizer), rtol=0, atol=0)
    ids = tokenizer("Paris is", return_tensors="pt")
    expected = stock.generate(**ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(generator.generate(**ids, max_new_tokens=5, do_sample=False), expected)
    assert generator.generation_config.use_cache


def test_fresh_process_with_trust_remote_code(grit_checkpoint, llama_st, tmp_path):
    """A process that never imported grit_hf loads the folder through the shim (ST, AutoModelForCausalLM)."""
    path = grit_checkpoint("llama")
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch
        from sentence_transformers import SentenceTransformer
        from transformers import AutoModelForCausalLM, AutoTokenizer
        assert "grit_hf" not in sys.modules
        st = SentenceTransformer({str(path)!r}, device="cpu", trust_remote_code=True)
        np.save({str(tmp_path / "q.npy")!r}, st.encode_query({TEXTS!r}))
        model = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained({str(path)!r})
        with torch.no_grad():
            logits = model(**tokenizer("Paris is the capital of France", return_tensors="pt")).logits
        np.save({str(tmp_path / "logits.npy")!r}, logits.numpy())
        print(type(model).__module__ + "." + type(model).__name__)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GritLMForCausalLM" in result.stdout
    assert _max_diff(np.load(tmp_path / "q.npy"), llama_st.encode_query(TEXTS)) == 0.0
    model = GritLMForCausalLM.from_pretrained(path)
    expected = _logits(model, model.tokenizer).numpy()
    assert _max_diff(np.load(tmp_path / "logits.npy"), expected) == 0.0


def test_without_grit_hf_and_remote_code_it_fails_clearly(grit_checkpoint, tmp_path):
    script = f"from transformers import AutoModel; AutoModel.from_pretrained({str(grit_checkpoint('llama'))!r})"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0 and "trust_remote_code" in result.stderr


# -- sentence-transformers features --------------------------------------------------------------------------------
def test_similarity_and_truncate_dim(grit_checkpoint, llama_st):
    queries, documents = llama_st.encode_query(TEXTS[:3]), llama_st.encode_document(TEXTS[:4])
    similarity = llama_st.similarity(queries, documents)
    assert similarity.shape == (3, 4)
    assert_close(similarity, torch.from_numpy(queries @ documents.T), rtol=0, atol=1e-6)
    truncated = SentenceTransformer(str(grit_checkpoint("llama")), device="cpu", truncate_dim=16)
    assert truncated.get_embedding_dimension() == 16
    assert _max_diff(truncated.encode_query(TEXTS[:3]), queries[:, :16]) == 0.0
    assert llama_st.encode(TEXTS[:3], truncate_dim=8).shape == (3, 8)


def test_multi_process_pool(llama_st):
    texts = [f"{text} {i}" for i in range(6) for text in TEXTS[:4]]
    expected = llama_st.encode_query(texts)
    pool = llama_st.start_multi_process_pool(["cpu", "cpu"])
    try:
        parallel = llama_st.encode_query(texts, pool=pool, chunk_size=6)
    finally:
        llama_st.stop_multi_process_pool(pool)
    assert parallel.shape == expected.shape
    assert _max_diff(parallel, expected) <= 1e-6


def test_trainer_smoke_cached_mnrl(grit_checkpoint, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    path = tmp_path / "model"
    shutil.copytree(grit_checkpoint("llama"), path)
    st = SentenceTransformer(str(path), device="cpu")
    before = {k: v.clone() for k, v in st[0].auto_model.model.state_dict().items()}
    pairs = Dataset.from_dict(
        {
            "anchor": ["capital of France", "German capital", "how plants make sugar", "list files"] * 2,
            "positive": [TEXTS[0], "Berlin is the capital of Germany.", TEXTS[2], "ls lists directory contents"] * 2,
        }
    )
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        prompts={"anchor": st.prompts["query"], "positive": st.prompts["document"]},
        use_cpu=True,
    )
    loss = CachedMultipleNegativesRankingLoss(st, mini_batch_size=2)
    trainer = SentenceTransformerTrainer(model=st, args=args, train_dataset=pairs, loss=loss)
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    after = st[0].auto_model.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    out = tmp_path / "trained"
    st.save(str(out))
    generator = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(generator, GritLMForCausalLM)
    assert_close(generator.model.embed_tokens.weight, after["embed_tokens.weight"], rtol=0, atol=0)
    reloaded = SentenceTransformer(str(out), device="cpu")
    assert _max_diff(reloaded.encode_query(TEXTS), st.encode_query(TEXTS)) <= 1e-6


def test_default_model_matches_encode_and_reference(default_model_dir):
    """The default model (SmolLM2-135M, ChatML templates) through ST equals encode() and the reference gritlm."""
    gritlm = pytest.importorskip("gritlm")
    texts = ["change group ownership", "chgrp changes the group of each FILE to GROUP.", "list directory contents"]
    st = grit_hf.sentence_transformer("default", device="cpu")
    model = GritLMModel.from_pretrained(default_model_dir)
    reference = gritlm.GritLM(str(default_model_dir), attn="bbcc", device="cpu")
    instruction = "Given a one-line summary from a Unix manual page, retrieve the manual page description"
    queries = st.encode(texts, prompt=grit_prompt(model, instruction))
    assert _max_diff(queries, model.encode(texts, instruction=instruction)) <= PARITY
    assert _max_diff(queries, reference.encode(texts, instruction=grit_prompt(model, instruction))) <= PARITY
    assert _max_diff(st.encode_document(texts), reference.encode(texts, instruction="<|embed|>\n")) <= PARITY


def test_tokenizer_without_pad_token_pads_with_the_end_token(stock_checkpoint, tmp_path):
    source = tmp_path / "nopad"
    shutil.copytree(stock_checkpoint("mistral"), source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(source)
    assert AutoTokenizer.from_pretrained(source).pad_token is None
    path = convert_checkpoint(source, tmp_path / "grit")
    assert json.loads((path / "sentence_bert_config.json").read_text())["processor_kwargs"] == {"pad_token": "</s>"}
    st = SentenceTransformer(str(path), device="cpu")
    model = GritLMModel.from_pretrained(path)
    assert (
        _max_diff(st.encode_query(TEXTS), model.encode(TEXTS, instruction=model.config.default_query_instruction))
        <= PARITY
    )
    assert AutoTokenizer.from_pretrained(path).pad_token is None  # the checkpoint's own tokenizer is unchanged


def test_template_ending_in_a_special_token_warns(stock_checkpoint, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        convert_checkpoint(stock_checkpoint("llama"), tmp_path / "special", query_template="{instruction}<pad>")
    assert "ends with a special token" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_encode(grit_checkpoint):
    path = grit_checkpoint("mistral")
    st = SentenceTransformer(str(path), device="cuda", model_kwargs={"dtype": torch.bfloat16})
    model = GritLMModel.from_pretrained(path, dtype=torch.bfloat16).to("cuda")
    out = st.encode_query(TEXTS, convert_to_tensor=True, batch_size=1)  # bf16 rounding depends on the batching
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    instruction = model.config.default_query_instruction
    expected = model.encode(TEXTS, instruction=instruction, convert_to_tensor=True, batch_size=1)
    assert_close(out, expected, rtol=0, atol=1e-4)
