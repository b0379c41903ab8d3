"""Quantized weights (`grit_hf.quantization`, `load_model(..., quantization=...)`): what is quantized and to what,
save and reload, the states' fingerprint, and the parts of grit-hf that need dense weights."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchao")

from tiny import make_stock_checkpoint  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from grit_hf import GritLMForCausalLM, GritRAG, convert_checkpoint, load_model, save_grit_checkpoint  # noqa: E402
from grit_hf.cache.fingerprint import compute_fingerprint  # noqa: E402
from grit_hf.quantization import INT4_GROUP_SIZE, model_quantization, weight_bytes  # noqa: E402

QUANTIZATIONS = ["int8", "int4"]
IDS = torch.tensor([[5, 17, 42, 9, 77, 31, 8, 120]])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny Llama with tied embeddings (as the default model): its stock folder and its GRIT conversion."""
    folder = tmp_path_factory.mktemp("quant")
    stock = make_stock_checkpoint(folder / "stock", "llama", tie_word_embeddings=True)
    return stock, convert_checkpoint(stock, folder / "grit")


@pytest.fixture(scope="module")
def quantized(checkpoints):
    return {q: load_model(checkpoints[1], device="cpu", dtype="bfloat16", quantization=q) for q in QUANTIZATIONS}


def _linear_names(model) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def _dequantized(linear: torch.nn.Linear) -> torch.Tensor:
    """The weight a quantized linear layer multiplies by, read back through its own kernel (`x @ W.T` at x = I)."""
    eye = torch.eye(linear.in_features, dtype=torch.bfloat16)
    return linear(eye).t().float()


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_every_linear_layer_is_quantized_and_the_embeddings_stay_dense(checkpoints, quantized, quantization):
    model = quantized[quantization]
    dense = load_model(checkpoints[1], device="cpu", dtype="bfloat16")
    kind = {"int8": "Int8Tensor", "int4": "Int4OpaqueTensor"}[quantization]
    names = _linear_names(model)
    assert "lm_head" in names and len(names) == 2 * 7 + 1
    assert {type(model.get_submodule(name).weight).__name__ for name in names} == {kind}
    assert model_quantization(model) == quantization and model_quantization(dense) is None
    embeddings = model.get_input_embeddings().weight
    assert type(embeddings) is torch.nn.Parameter and embeddings is not model.lm_head.weight
    torch.testing.assert_close(embeddings, dense.get_input_embeddings().weight, rtol=0, atol=0)
    assert not model.config.tie_word_embeddings and not model.config.text_config.tie_word_embeddings
    # bytes a decode step reads, by hand: int8 = a byte per weight + an fp32 scale and an int8 zero point per row;
    # int4 = half a byte per weight + a bf16 scale and zero point per group of 32; norms stay bf16
    stored = {"int8": lambda n, k: n * k + 5 * n, "int4": lambda n, k: n * k // 2 + 4 * n * k // INT4_GROUP_SIZE}
    linears = sum(stored[quantization](*dense.get_submodule(name).weight.shape) for name in names)
    norms = sum(2 * p.numel() for name, p in dense.named_parameters() if "norm" in name)
    assert weight_bytes(model) == linears + norms
    assert weight_bytes(dense) == 2 * sum(p.numel() for p in dense.parameters())  # the tied head counted once


def test_int4_weights_round_to_the_nearest_step_of_their_group(checkpoints, quantized):
    """Hand computation: each group of 32 weights along the input has 16 levels from its minimum to its maximum, so
    a weight moves by at most half a step, plus the bf16 rounding of the scale (<= 8 steps times 2^-8 of one: 2^-5
    of a step) and of the zero point and the read-back value (2^-8 of the largest weight each)."""
    dense = load_model(checkpoints[1], device="cpu", dtype="bfloat16")
    for name in _linear_names(dense):
        weight = dense.get_submodule(name).weight.float()
        groups = weight.reshape(weight.shape[0], -1, INT4_GROUP_SIZE)
        step = (groups.amax(-1) - groups.amin(-1)) / 15
        error = (_dequantized(quantized["int4"].get_submodule(name)) - weight).reshape(groups.shape).abs()
        bound = step[..., None] * (0.5 + 2**-5) + groups.abs().amax(-1, keepdim=True) * 2**-7
        assert (error <= bound).all(), name


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_logits_are_the_plain_model_with_the_dequantized_weights(checkpoints, quantized, quantization):
    """Reference: transformers' own Llama with every linear weight replaced by what the quantized layer multiplies
    by; the rest of the model (embeddings, norms, attention) is the checkpoint's."""
    model = quantized[quantization]
    reference = AutoModelForCausalLM.from_pretrained(checkpoints[0], dtype=torch.bfloat16).eval()
    reference.lm_head.weight = torch.nn.Parameter(reference.lm_head.weight.detach().clone())  # untie
    with torch.no_grad():
        for name in _linear_names(model):
            reference.get_submodule(name).weight.copy_(_dequantized(model.get_submodule(name)))
        got, want = model(input_ids=IDS).logits.float(), reference(input_ids=IDS).logits.float()
    torch.testing.assert_close(got, want, rtol=0.02, atol=0.02 * want.abs().max().item())


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_a_saved_quantized_model_reloads_quantized(quantized, quantization, tmp_path):
    model = quantized[quantization]
    save_grit_checkpoint(model, model.tokenizer, tmp_path)
    for reloaded in (load_model(tmp_path, device="cpu"), GritLMForCausalLM.from_pretrained(tmp_path).eval()):
        assert model_quantization(reloaded) == quantization and reloaded.dtype == torch.bfloat16
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=IDS).logits, model(input_ids=IDS).logits, rtol=0, atol=0)
        assert compute_fingerprint(reloaded, True).matches(compute_fingerprint(model, True))
    assert model_quantization(load_model(tmp_path, device="cpu", quantization=quantization)) == quantization
    other = "int8" if quantization == "int4" else "int4"
    with pytest.raises(ValueError, match=f"saved quantized \\({quantization}\\)"):
        load_model(tmp_path, device="cpu", quantization=other)


def test_fingerprints_tell_quantized_models_from_their_dense_parent(checkpoints, quantized):
    dense = load_model(checkpoints[1], device="cpu", dtype="bfloat16")
    prints = {"dense": compute_fingerprint(dense, False)}
    prints.update({q: compute_fingerprint(model, False) for q, model in quantized.items()})
    for weights_hash in ("sample", "full"):
        assert (
            compute_fingerprint(quantized["int4"], False, weights_hash=weights_hash).weights != prints["dense"].weights
        )
    for a, b in [("dense", "int8"), ("dense", "int4"), ("int8", "int4")]:
        differences = prints[a].differences(prints[b])
        assert any(line.startswith("weights") for line in differences), (a, b)
        assert any(line.startswith("config") for line in differences), (a, b)
        assert prints[a].dtype == prints[b].dtype  # the states' dtype alone would not tell them apart


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_greedy_decoding_of_a_quantized_model_matches_transformers_generate(quantized, quantization):
    model = quantized[quantization]
    with torch.no_grad():
        want = model.generate(IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=10, do_sample=False)
    want = want[0, IDS.shape[1] :].tolist()
    for batch_decoding in (False, True):
        rag = GritRAG(model, batch_decoding=batch_decoding)
        got = rag.generate_from_plan([IDS[0].tolist()], max_new_tokens=10, ignore_eos=True)
        assert got.token_ids == want


def test_invalid_quantization_arguments(checkpoints):
    with pytest.raises(ValueError, match=r"Invalid `quantization`: 'int3'. Valid choices are: \('int8', 'int4'\)"):
        load_model(checkpoints[1], device="cpu", quantization="int3")
    with pytest.raises(TypeError, match="`quantization` must be None or a str, got int"):
        load_model(checkpoints[1], device="cpu", quantization=4)
    with pytest.raises(ValueError, match="CPU int4 layout, but `device` is 'cuda'"):
        load_model(checkpoints[1], device="cuda", quantization="int4")
    with pytest.raises(ValueError, match="either `quantization` or `quantization_config`"):
        load_model(checkpoints[1], device="cpu", quantization="int8", quantization_config=object())


def test_training_and_merging_refuse_quantized_weights(checkpoints, quantized, tmp_path):
    pytest.importorskip("trl")
    from grit_hf.folders.adapters import merge_adapter_checkpoint
    from grit_hf.trainer import GRITConfig, GRITTrainer

    args = GRITConfig(str(tmp_path / "out"), max_steps=1, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match=r"Training \(GRITTrainer\) needs dense weights.*quantized \(int4, torchao\)"):
        GRITTrainer(quantized["int4"], args=args, train_dataset=[{"messages": []}], embedding_dataset=[])
    quantized["int8"].save_pretrained(tmp_path / "int8")
    with pytest.raises(ValueError, match="Merging an adapter needs dense weights"):
        merge_adapter_checkpoint(tmp_path / "int8", tmp_path / "adapter", tmp_path / "merged")


@pytest.mark.slow
def test_quantized_default_model_stays_within_its_measured_bounds(default_model_dir, shared_data):
    """Against the default model's bf16 (measured on these 24 man pages and 6 answers, and at scale in
    benchmarks/results/quantization_quality_cpu.md): int8 embeddings at cosine 0.9995 mean / 0.9993 min, answers at
    token F1 0.94; int4 far from it (the trained adapter's small changes drown in 4-bit rounding): cosine 0.84 mean /
    0.73 min, answers at token F1 0.34."""
    import json

    from grit_hf.evaluation.metrics import token_f1

    pages = [json.loads(line)["text"] for line in open(shared_data / "manpages" / "eval" / "corpus.jsonl")][:24]
    models = {
        q: load_model(default_model_dir, device="cpu", dtype="bfloat16", quantization=q)
        for q in (None, *QUANTIZATIONS)
    }
    vectors = {q: torch.from_numpy(model.encode(pages, max_length=256)) for q, model in models.items()}
    answers = {}
    for q, model in models.items():
        rag = GritRAG(model, cache_attention="causal", verify_positions=False)
        ids = rag.add_documents(pages[:6])
        answers[q] = [rag.answer("What does this command do?", doc_ids=[i], max_new_tokens=16).text for i in ids]
    bounds = {"int8": (0.999, 0.995, 0.85), "int4": (0.80, 0.65, 0.25)}  # cosine mean, cosine min, answer F1
    for q, (mean, low, f1) in bounds.items():
        cosine = torch.nn.functional.cosine_similarity(vectors[None], vectors[q])
        answer_f1 = sum(token_f1(b, a) for a, b in zip(answers[None], answers[q])) / len(answers[q])
        assert cosine.mean() >= mean and cosine.min() >= low and answer_f1 >= f1, (q, cosine, answer_f1)
