"""Hub names everywhere grit-hf takes a model (issue 14), offline, from fake Hugging Face cache entries laid out
exactly as `huggingface_hub` lays out a download: one like GritLM/GritLM-7B (tiny Mistral, `auto_map` to its own
modeling file, which leaves a marker if it is ever run; no sentence-transformers files; a second revision `v2`) and
one like a stock meta-llama checkpoint. The reference GRIT embeddings come from the `gritlm` package on the same
weights."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_cache import add_hub_entry, gritlm_7b_layout, hub_environment
from tiny import make_stock_checkpoint
from torch.testing import assert_close
from transformers import AutoModel, AutoModelForCausalLM, MistralForCausalLM

import grit_hf
from grit_hf import GritLMConfig, GritLMForCausalLM, GritLMModel
from grit_hf.cli import main as cli_main

INTEGRATIONS = Path(__file__).resolve().parents[2] / "integrations"
if importlib.util.find_spec("langchain_gritlm") is None:  # not installed (`pip install -e .` exposes them)
    sys.path.insert(0, str(INTEGRATIONS))

GRITLM = "GritLM/GritLM-7B"
LLAMA = "meta-llama/Llama-3.2-1B"
TEXTS = [
    "The capital of France is Paris.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "chgrp changes the group ownership of files",
]
INSTRUCTION = GritLMConfig().default_query_instruction
QUERY_FORMAT = f"<|user|>\n{INSTRUCTION}\n<|embed|>\n"  # GritLM-7B's formats
DOCUMENT_FORMAT = "<|embed|>\n"


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The fake HF home: GritLM/GritLM-7B (main and `v2`, other weights) and meta-llama/Llama-3.2-1B."""
    root = tmp_path_factory.mktemp("hub-names")
    home = root / "hf-home"
    mistral = make_stock_checkpoint(root / "stock-mistral", "mistral")
    mistral_v2 = make_stock_checkpoint(root / "stock-mistral-v2", "mistral", seed=1)
    llama = make_stock_checkpoint(root / "stock-llama", "llama")
    marker = root / "remote-code-ran"
    snapshots = {
        GRITLM: add_hub_entry(home / "hub", GRITLM, gritlm_7b_layout(mistral, root / "layout", marker)),
        (GRITLM, "v2"): add_hub_entry(
            home / "hub", GRITLM, gritlm_7b_layout(mistral_v2, root / "layout-v2", marker), branch="v2"
        ),
        LLAMA: add_hub_entry(home / "hub", LLAMA, llama),
    }
    gritlm = pytest.importorskip("gritlm")
    torch.set_num_threads(1)
    # the reference reads the plain stock folder: on the GritLM-7B layout it would run the remote code (marker)
    reference = gritlm.GritLM(str(mistral), attn="bbcc", device="cpu")
    reference_v2 = gritlm.GritLM(str(mistral_v2), attn="bbcc", device="cpu")
    return {
        "root": root,
        "home": home,
        "grit_home": root / "grit-home",
        "stock": {GRITLM: mistral, (GRITLM, "v2"): mistral_v2, LLAMA: llama},
        "snapshots": snapshots,
        "marker": marker,
        "queries": reference.encode(TEXTS, instruction=QUERY_FORMAT),
        "documents": reference.encode(TEXTS, instruction=DOCUMENT_FORMAT),
        "documents_v2": reference_v2.encode(TEXTS, instruction=DOCUMENT_FORMAT),
    }


@pytest.fixture(autouse=True)
def offline_hf_cache(hub, monkeypatch):
    """Read the fake HF cache offline (environment for subprocesses, huggingface_hub's constants for this one), with
    grit-hf's own cache beside it; one thread; and no test may run the checkpoint's remote code."""
    import huggingface_hub.constants

    for key, value in hub_environment(hub["home"]).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GRIT_HF_HOME", str(hub["grit_home"]))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub["home"] / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    assert not hub["marker"].exists(), "the checkpoint's remote code was run"


def _stock_logits(folder, model_class=AutoModelForCausalLM):
    model = model_class.from_pretrained(folder)
    return model, _logits(model)


def _logits(model):
    ids = torch.tensor([[0, 5, 17, 42, 99, 3]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


# -- the fake cache is what huggingface_hub reads ----------------------------------------------------------------------
def test_fake_entries_are_laid_out_like_huggingface_hub(hub):
    from huggingface_hub import scan_cache_dir, snapshot_download

    main = Path(snapshot_download(GRITLM, local_files_only=True))
    assert main == hub["snapshots"][GRITLM]
    assert Path(snapshot_download(GRITLM, revision="v2", local_files_only=True)) == hub["snapshots"][(GRITLM, "v2")]
    assert Path(snapshot_download(LLAMA, local_files_only=True)) == hub["snapshots"][LLAMA]
    assert (main / "config.json").is_symlink() and (main / "config.json").resolve().parent.name == "blobs"
    assert (main / "modeling_gritlm7b.py").is_file() and not (main / "modules.json").exists()
    config = json.loads((main / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["architectures"] == ["MistralForCausalLM"]
    repos = {repo.repo_id: repo for repo in scan_cache_dir(hub["home"] / "hub").repos}
    assert len(repos[GRITLM].revisions) == 2 and len(repos[LLAMA].revisions) == 1


def test_resolve_names_helpers(hub):
    snapshot = hub["snapshots"][GRITLM]
    assert grit_hf.resolve_checkpoint(GRITLM) == snapshot
    assert grit_hf.resolve_checkpoint(GRITLM, revision="v2") == hub["snapshots"][(GRITLM, "v2")]
    assert grit_hf.resolve_checkpoint(GRITLM, revision=snapshot.name) == snapshot  # a commit hash
    from grit_hf.folders.resolve import checkpoint_display_name, hub_repo_id, known_grit_checkpoint

    assert hub_repo_id(snapshot) == GRITLM and hub_repo_id(hub["stock"][LLAMA]) is None
    assert checkpoint_display_name(snapshot) == GRITLM and checkpoint_display_name(GRITLM) == GRITLM
    assert "modeling_gritlm7b" in known_grit_checkpoint(snapshot)
    assert known_grit_checkpoint(hub["snapshots"][LLAMA]) is None


def test_known_grit_checkpoints(hub, grit_checkpoint, tmp_path):
    from grit_hf.folders.resolve import known_grit_checkpoint

    assert known_grit_checkpoint(grit_checkpoint("llama")) == "a grit-hf checkpoint"
    org = tmp_path / "models--GritLM--GritLM-8x7B" / "snapshots" / ("0" * 40)
    org.mkdir(parents=True)
    (org / "config.json").write_text(json.dumps({"model_type": "mixtral"}))
    assert known_grit_checkpoint(org) == "the Hub repository GritLM/GritLM-8x7B"
    templated = tmp_path / "templated"
    templated.mkdir()
    (templated / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (templated / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ '<|embed|>\\n' }}"}))
    assert "<|embed|>" in known_grit_checkpoint(templated)
    assert known_grit_checkpoint(tmp_path / "missing") is None


def test_offline_miss_names_the_download_command(hub):
    with pytest.raises(ValueError) as error:
        grit_hf.load_model("GritLM/GritLM-8x7B")
    message = str(error.value)
    assert "`hf download GritLM/GritLM-8x7B`" in message and str(hub["home"] / "hub") in message
    with pytest.raises(ValueError, match=r"`hf download GritLM/GritLM-7B --revision nope`"):
        GritLMForCausalLM.from_pretrained(GRITLM, revision="nope")
    with pytest.raises(ValueError, match="neither an existing folder nor a Hugging Face Hub name"):
        grit_hf.load_model("not a//name")


# -- every loader ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("repo", [GRITLM, LLAMA])
@pytest.mark.parametrize("model_class", [GritLMForCausalLM, GritLMModel])
def test_model_classes_take_hub_names(hub, repo, model_class):
    model = model_class.from_pretrained(repo).eval()
    assert type(model) is model_class and Path(model.name_or_path) == hub["snapshots"][repo]
    stock = AutoModelForCausalLM.from_pretrained(hub["stock"][repo])
    for name, weight in stock.state_dict().items():
        assert torch.equal(model.state_dict()[name], weight), name
    if repo == GRITLM:
        assert _max_diff(model.encode(TEXTS), hub["documents"]) <= 1e-5
        assert _max_diff(model.encode(TEXTS, instruction=INSTRUCTION), hub["queries"]) <= 1e-5


def test_load_model_and_revisions(fp32_by_default, hub):
    model = grit_hf.load_model(GRITLM, device="cpu", dtype="float32")
    assert isinstance(model, GritLMForCausalLM)
    assert_close(_logits(model), _stock_logits(hub["stock"][GRITLM], MistralForCausalLM)[1], rtol=0, atol=0)
    v2 = grit_hf.load_model(GRITLM, device="cpu", revision="v2")
    assert Path(v2.name_or_path) == hub["snapshots"][(GRITLM, "v2")]
    assert _max_diff(v2.encode(TEXTS), hub["documents_v2"]) <= 1e-5
    assert _max_diff(v2.encode(TEXTS), hub["documents"]) > 1e-2  # really the other weights
    by_commit = GritLMModel.from_pretrained(GRITLM, revision=hub["snapshots"][(GRITLM, "v2")].name)
    assert _max_diff(by_commit.encode(TEXTS), hub["documents_v2"]) <= 1e-5


def test_cli_convert_and_embed_take_hub_names(fp32_by_default, hub, tmp_path):
    out = tmp_path / "converted"
    assert cli_main(["convert", GRITLM, str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gritlm" and "modeling_gritlm7b" not in json.dumps(config)
    assert not (out / "modeling_gritlm7b.py").exists()
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n")
    for revision, expected in ((None, hub["documents"]), ("v2", hub["documents_v2"])):
        npy = tmp_path / f"{revision}.npy"
        argv = ["embed", str(texts), "--model", GRITLM, "-o", str(npy), "--no-progress"]
        assert cli_main(argv + (["--revision", revision] if revision else [])) == 0
        assert _max_diff(np.load(npy), expected) <= 1e-5
    query_npy = tmp_path / "queries.npy"
    argv = ["embed", str(texts), "--model", GRITLM, "--instruction", INSTRUCTION, "-o", str(query_npy)]
    assert cli_main(argv + ["--no-progress"]) == 0
    assert _max_diff(np.load(query_npy), hub["queries"]) <= 1e-5


def test_shared_registry_and_integrations_take_hub_names(fp32_by_default, hub):
    from langchain_gritlm import ChatGritLM, GritLMEmbeddings
    from llama_index.embeddings.gritlm import GritLMEmbedding
    from llama_index.llms.gritlm import GritLM

    from grit_hf.rag import get_shared, model_display_name, release_shared

    snapshot = hub["snapshots"][GRITLM]
    try:
        rag = get_shared(GRITLM)
        assert Path(rag.model.name_or_path) == snapshot
        assert get_shared(str(snapshot)) is rag and get_shared(rag.model) is rag  # keyed by the snapshot folder
        assert get_shared(GRITLM, load_kwargs={"revision": snapshot.name}) is rag  # the same commit
        assert model_display_name(rag.model) == GRITLM == model_display_name(GRITLM)
        v2 = get_shared(GRITLM, load_kwargs={"revision": "v2"})
        assert v2 is not rag and Path(v2.model.name_or_path) == hub["snapshots"][(GRITLM, "v2")]

        embeddings = GritLMEmbeddings(model=GRITLM)
        assert embeddings.shared is rag and embeddings.shared_name == GRITLM
        assert _max_diff(embeddings.embed_documents(TEXTS), hub["documents"]) <= 1e-5
        assert _max_diff(embeddings.embed_query(TEXTS[0]), hub["queries"][0]) <= 1e-5
        assert ChatGritLM(model=GRITLM, max_new_tokens=2).shared is rag
        llama_index_embedding = GritLMEmbedding(model=GRITLM)
        assert llama_index_embedding.shared is rag
        assert _max_diff(llama_index_embedding.get_text_embedding(TEXTS[1]), hub["documents"][1]) <= 1e-5
        llm = GritLM(model=GRITLM, max_new_tokens=2)
        assert llm.shared is rag and isinstance(llm.complete("Hello").text, str)
    finally:
        release_shared(GRITLM)
        release_shared(GRITLM, revision="v2")


def test_trainer_takes_hub_names(hub, tmp_path):
    pytest.importorskip("trl")
    from trainer.helpers import embedding_records, generative_records, write_jsonl
    from trl import ModelConfig

    from grit_hf.cli.train import train
    from grit_hf.trainer import GRITConfig, GRITTrainer

    def args(name: str) -> GRITConfig:
        return GRITConfig(
            output_dir=str(tmp_path / name),
            embedding_dataset=str(write_jsonl(tmp_path / "emb.jsonl", embedding_records(8))),
            generative_dataset=str(write_jsonl(tmp_path / "gen.jsonl", generative_records(8))),
            max_steps=2,
            per_device_train_batch_size=2,
            emb_batch_size=2,
            learning_rate=1e-3,
            bf16=False,
            activation_checkpointing=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            dataloader_pin_memory=False,
            seed=0,
        )

    trainer = GRITTrainer(LLAMA, args=args("llama"))
    assert Path(trainer.model.name_or_path) == hub["snapshots"][LLAMA]
    assert trainer.train().global_step == 2

    trained = train(args("gritlm-v2"), ModelConfig(model_name_or_path=GRITLM, model_revision="v2", dtype="float32"))
    assert trained.state.global_step == 2 and Path(trained.model.name_or_path) == hub["snapshots"][(GRITLM, "v2")]
    saved = json.loads((tmp_path / "gritlm-v2" / "config.json").read_text())
    assert saved["model_type"] == "gritlm" and saved["text_config"]["model_type"] == "mistral"


# -- the one-liners ----------------------------------------------------------------------------------------------------
def test_sentence_transformer_one_liner_converts_once(hub, tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    import grit_hf.checkpoint.conversion as conversion

    monkeypatch.setenv("GRIT_HF_HOME", str(tmp_path / "grit-home"))
    conversions = []
    real_convert = conversion.convert_checkpoint
    monkeypatch.setattr(
        conversion, "convert_checkpoint", lambda *a, **k: conversions.append(a) or real_convert(*a, **k)
    )

    st = grit_hf.sentence_transformer(GRITLM, device="cpu")
    assert type(st) is SentenceTransformer and len(conversions) == 1
    folder = Path(st[0].auto_model.name_or_path)
    assert folder.parent == tmp_path / "grit-home" / "converted" and folder.name.startswith("GritLM--GritLM-7B-")
    assert _max_diff(st.encode_query(TEXTS), hub["queries"]) <= 1e-5
    assert _max_diff(st.encode_document(TEXTS), hub["documents"]) <= 1e-5

    again = grit_hf.sentence_transformer(GRITLM, device="cpu")
    assert len(conversions) == 1 and Path(again[0].auto_model.name_or_path) == folder  # converted once
    assert _max_diff(again.encode_query(TEXTS), hub["queries"]) <= 1e-5
    grit_hf.sentence_transformer(GRITLM, revision="v2", device="cpu")
    assert len(conversions) == 2  # another revision is another checkpoint


def test_automodel_one_liners(hub):
    for model in (
        AutoModel.from_pretrained(grit_hf.grit_checkpoint_folder(GRITLM)),
        GritLMModel.from_pretrained(GRITLM),
    ):
        assert isinstance(model, GritLMModel)
        assert _max_diff(model.encode(TEXTS, instruction=INSTRUCTION), hub["queries"]) <= 1e-5
        assert _max_diff(model.encode(TEXTS), hub["documents"]) <= 1e-5


# -- loud instead of silent --------------------------------------------------------------------------------------------
def test_grit_hf_converts_known_grit_checkpoints_for_sentence_transformers(hub):
    from grit_hf.evaluation import GritRetriever, SentenceTransformerRetriever

    retriever = SentenceTransformerRetriever(GRITLM, device="cpu")  # grit-hf hands it to sentence-transformers
    assert Path(retriever.model[0].auto_model.name_or_path).parent.name == "converted"
    assert _max_diff(retriever.model.encode_document(TEXTS), hub["documents"]) <= 1e-5
    assert retriever.name == f"sentence-transformers:{GRITLM}"
    assert GritRetriever(GRITLM).name == f"grit:{GRITLM} (bidirectional)"
    stock = SentenceTransformerRetriever(LLAMA, device="cpu")  # not a GRIT model: loaded as it is
    assert Path(stock.model[0].auto_model.name_or_path) == hub["snapshots"][LLAMA]


def test_plain_sentence_transformers_and_automodel_on_the_gritlm_7b_layout(hub):
    """What grit-hf cannot intercept, measured with `import grit_hf` (a process without it loads the same classes):
    a causal base model with last-token pooling over the prompt, not GRIT; the numbers are in the README."""
    from sentence_transformers import SentenceTransformer

    snapshot = str(hub["snapshots"][GRITLM])
    st = SentenceTransformer(snapshot, device="cpu")
    assert [type(module).__name__ for module in st] == ["Transformer", "Pooling"]
    assert type(st[0].auto_model).__name__ == "MistralModel"
    assert st[1].pooling_mode == "lasttoken" and st[1].include_prompt
    documents = st.encode(TEXTS, prompt=DOCUMENT_FORMAT, normalize_embeddings=True)
    queries = st.encode(TEXTS, prompt=QUERY_FORMAT, normalize_embeddings=True)
    assert _max_diff(documents, hub["documents"]) > 0.1 and _max_diff(queries, hub["queries"]) > 0.1
    model = AutoModel.from_pretrained(snapshot)
    assert type(model).__name__ == "MistralModel" and not hasattr(model, "encode")
    assert type(AutoModelForCausalLM.from_pretrained(snapshot)).__name__ == "MistralForCausalLM"


# -- the portable artifacts --------------------------------------------------------------------------------------------
FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoModelForCausalLM
    converted, stock_export, texts, instruction, published = sys.argv[1:3] + [json.loads(sys.argv[3])] + sys.argv[4:]
    result = {}
    # the stock-config export: plain sentence-transformers and transformers, grit-hf never imported
    st = SentenceTransformer(stock_export, device="cpu")
    result["stock_export_documents"] = st.encode_document(texts).tolist()
    result["stock_export_queries"] = st.encode_query(texts).tolist()
    causal = AutoModelForCausalLM.from_pretrained(stock_export)
    ids = torch.tensor([[0, 5, 17, 42, 99, 3]])
    with torch.no_grad():
        result["stock_export_logits"] = causal(input_ids=ids).logits.tolist()
    result["stock_export_classes"] = [type(st[0].auto_model).__name__, type(causal).__name__]
    result["grit_hf_imported"] = "grit_hf" in sys.modules
    # the grit-hf checkpoint through its remote-code shim (which imports the installed grit_hf)
    st = SentenceTransformer(converted, device="cpu", trust_remote_code=True)
    result["st_documents"] = st.encode_document(texts).tolist()
    result["st_queries"] = st.encode_query(texts).tolist()
    # the same folder published on the Hub (here: in the HF cache), by name
    st = SentenceTransformer(published, device="cpu", trust_remote_code=True)
    result["published_queries"] = st.encode_query(texts).tolist()
    model = AutoModel.from_pretrained(converted, trust_remote_code=True)
    result["automodel_class"] = type(model).__name__
    result["automodel_queries"] = model.encode(texts, instruction=instruction).tolist()
    print(json.dumps(result))
    """
)


def test_converted_folder_is_the_portable_artifact(hub, tmp_path):
    from sentence_transformers import SentenceTransformer

    converted, stock_export = tmp_path / "out", tmp_path / "stock-export"
    assert cli_main(["convert", GRITLM, str(converted)]) == 0
    assert cli_main(["convert", GRITLM, str(stock_export), "--stock-config"]) == 0
    stock_config = json.loads((stock_export / "config.json").read_text())
    assert stock_config["model_type"] == "mistral" and stock_config["is_causal"] is True
    assert "auto_map" not in stock_config and not list(stock_export.glob("*.py"))

    # with `import grit_hf` (this process), no remote code
    st = SentenceTransformer(str(converted), device="cpu")
    assert _max_diff(st.encode_query(TEXTS), hub["queries"]) <= 1e-5
    assert _max_diff(st.encode_document(TEXTS), hub["documents"]) <= 1e-5
    model = AutoModel.from_pretrained(converted)
    assert isinstance(model, GritLMModel)
    assert _max_diff(model.encode(TEXTS, instruction=INSTRUCTION), hub["queries"]) <= 1e-5
    assert isinstance(AutoModelForCausalLM.from_pretrained(converted), GritLMForCausalLM)

    # published (`hf upload my-team/GritLM-7B-grit out/`): used as it is, never converted again
    published = add_hub_entry(hub["home"] / "hub", "my-team/GritLM-7B-grit", converted)
    assert grit_hf.grit_checkpoint_folder("my-team/GritLM-7B-grit") == published

    # a fresh process
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(converted), str(stock_export), json.dumps(TEXTS), INSTRUCTION]
        + ["my-team/GritLM-7B-grit"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert not result["grit_hf_imported"]
    assert result["stock_export_classes"] == ["MistralModel", "MistralForCausalLM"]
    assert _max_diff(result["stock_export_documents"], hub["documents"]) <= 1e-5
    assert _max_diff(result["stock_export_queries"], hub["queries"]) <= 1e-5
    _, stock_logits = _stock_logits(hub["stock"][GRITLM], MistralForCausalLM)
    assert _max_diff(result["stock_export_logits"], stock_logits) == 0  # generation unchanged: causal
    assert _max_diff(result["st_documents"], hub["documents"]) <= 1e-5
    assert _max_diff(result["st_queries"], hub["queries"]) <= 1e-5
    assert _max_diff(result["published_queries"], hub["queries"]) <= 1e-5
    assert result["automodel_class"] == "GritLMModel"
    assert _max_diff(result["automodel_queries"], hub["queries"]) <= 1e-5
