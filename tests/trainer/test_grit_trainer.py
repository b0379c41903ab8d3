from __future__ import annotations

import json
import math

import datasets
import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.testing import assert_close
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from grit_hf import GritLMForCausalLM, GritLMModel
from grit_hf.trainer import GRITTrainer, add_embedding_forward

from .helpers import generative_records


def _history(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("lambda_rep, lambda_gen", [(1.0, 1.0), (0.3, 2.0)])
def test_unified_run_logs_both_losses(tiny_grit, make_args, tmp_path, lambda_rep, lambda_gen):
    args = make_args(
        max_steps=2, save_strategy="steps", save_steps=2, emb_chunk_size=3, gradient_accumulation_steps=2,
        lambda_rep=lambda_rep, lambda_gen=lambda_gen,
    )  # fmt: skip
    trainer = GRITTrainer(str(tiny_grit), args=args)
    trainer.train()
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert entry["loss_rep"] > 0 and entry["loss_gen"] > 0
        expected = lambda_rep * entry["loss_rep"] + lambda_gen * entry["loss_gen"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-4)


def test_checkpoints_are_grit_checkpoints(tiny_grit, make_args, tmp_path):
    trainer = GRITTrainer(str(tiny_grit), args=make_args(max_steps=1, save_strategy="steps", save_steps=1))
    trainer.train()
    checkpoint = tmp_path / "out" / "checkpoint-1"
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "gritlm" and "AutoModel" in config.get("auto_map", {})
    trained = trainer.model.eval()
    expected = trained.encode(["ls lists a directory"], instruction="Find it")
    embedder = AutoModel.from_pretrained(checkpoint)
    generator = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert isinstance(embedder, GritLMModel) and isinstance(generator, GritLMForCausalLM)
    np.testing.assert_allclose(embedder.encode(["ls lists a directory"], instruction="Find it"), expected, atol=1e-6)
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(str(checkpoint), device="cpu")
    assert st_model.encode(["ls lists a directory"]).shape == (1, trained.config.text_config.hidden_size)


@pytest.mark.parametrize("mode", ["embedding", "generative"])
def test_single_objective_modes(tiny_grit, make_args, mode):
    args = make_args(mode=mode, max_steps=2)
    trainer = GRITTrainer(str(tiny_grit), args=args)
    lm_head = trainer.model.lm_head.weight.detach().clone()
    trainer.train()
    logged = _history(trainer)
    present, absent = ("loss_rep", "loss_gen") if mode == "embedding" else ("loss_gen", "loss_rep")
    assert all(present in entry and absent not in entry for entry in logged)
    assert logged[0]["loss"] == pytest.approx(logged[0][present], rel=1e-4)
    if mode == "embedding":  # L_rep does not use the LM head: it stays as it was
        assert torch.equal(trainer.model.lm_head.weight, lm_head)


def test_missing_data_is_reported(tiny_grit, make_args):
    with pytest.raises(ValueError, match="needs embedding data"):
        GRITTrainer(str(tiny_grit), args=make_args(embedding_dataset=None))
    with pytest.raises(TypeError, match="GRITConfig"):
        GRITTrainer(str(tiny_grit), args="not a config")


def _recording_trainer():
    class Recording(GRITTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            self.seen.append({k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
            return super().training_step(model, inputs, num_items_in_batch)

    return Recording


def _sample_nll(model, batch) -> list[tuple[float, int]]:
    """(summed NLL, token count) of every sample of a padded micro-batch, from plain logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
    mask = labels != -100
    return [(float((nll[i] * mask[i]).sum()), int(mask[i].sum())) for i in range(len(labels))]


@pytest.mark.parametrize("aggregation", ["token", "sample", "mixed"])
def test_logged_generative_loss_matches_hand_computation(tiny_grit, make_args, tmp_path, aggregation):
    """Two micro-batches of two samples (gradient accumulation): the logged L_gen is the aggregation over all four."""
    path = tmp_path / "gen4.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generative_records(4)))
    args = make_args(
        mode="generative", generative_dataset=str(path), max_steps=1, gradient_accumulation_steps=2,
        learning_rate=0.0, gen_loss_aggregation=aggregation,
    )  # fmt: skip
    trainer = _recording_trainer()(str(tiny_grit), args=args)
    trainer.seen = []
    trainer.train()
    micro = [_sample_nll(trainer.model, batch) for batch in trainer.seen]
    samples = [s for batch in micro for s in batch]
    if aggregation == "token":
        expected = sum(s for s, _ in samples) / sum(n for _, n in samples)
    elif aggregation == "sample":
        expected = sum(s / n for s, n in samples) / len(samples)
    else:
        expected = sum(sum(s for s, _ in b) / sum(n for _, n in b) for b in micro) / len(micro)
    assert len(micro) == 2 and len(samples) == 4
    assert _history(trainer)[0]["loss_gen"] == pytest.approx(expected, abs=2e-5)


@pytest.mark.parametrize("aggregation", ["token", "sample", "mixed"])
def test_packing_leaves_the_loss_unchanged(tiny_grit, make_args, tmp_path, aggregation):
    path = tmp_path / "gen4.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generative_records(4)))
    losses = {}
    for packing in (False, True):
        args = make_args(
            mode="generative", generative_dataset=str(path), per_device_train_batch_size=4, max_length=512,
            packing=packing, gen_loss_aggregation=aggregation,
        )  # fmt: skip
        trainer = GRITTrainer(str(tiny_grit), args=args)
        loader = trainer.get_train_dataloader()
        batches, _ = trainer.get_batch_samples(iter(loader), 1, trainer.args.device)
        batch = batches[0]
        assert ("position_ids" in batch) == packing and (packing or batch["input_ids"].shape[0] == 4)
        with torch.no_grad():
            losses[packing] = trainer._generative_share(trainer.model.eval(), batch)
        if packing:  # no attention across samples: each packed sample scores like the sample alone
            row, positions = batch["input_ids"][0], batch["position_ids"][0]
            starts = (positions == 0).nonzero().flatten().tolist() + [int((positions > 0).nonzero().max()) + 1]
            with torch.no_grad():
                packed = trainer.model(input_ids=row[None], position_ids=positions[None], use_cache=False).logits
                for start, end in zip(starts[:-1], starts[1:]):
                    alone = trainer.model(input_ids=row[None, start:end], use_cache=False).logits
                    assert_close(packed[:, start:end], alone, rtol=1e-5, atol=1e-5)
    assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-6)


def test_resume_reproduces_the_uninterrupted_loss_curve(tiny_grit, make_args, tmp_path):
    common = dict(max_steps=6, gradient_accumulation_steps=2, emb_chunk_size=2, save_strategy="steps", save_steps=3)
    full = GRITTrainer(str(tiny_grit), args=make_args(output_dir=str(tmp_path / "full"), **common))
    full.train()
    resumed = GRITTrainer(str(tiny_grit), args=make_args(output_dir=str(tmp_path / "resumed"), **common))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    expected = [e for e in _history(full) if e["step"] > 3]
    got = [e for e in _history(resumed) if e["step"] > 3]  # the history up to step 3 comes from the checkpoint
    assert [e["step"] for e in got] == [4, 5, 6]
    for a, b in zip(got, expected):
        for key in ("loss", "loss_rep", "loss_gen"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key)


def test_activation_checkpointing_gives_the_same_step(tiny_grit, make_args):
    losses = []
    for checkpointing in (False, True):
        trainer = GRITTrainer(str(tiny_grit), args=make_args(max_steps=2, activation_checkpointing=checkpointing))
        trainer.train()
        losses.append([value for e in _history(trainer) for value in (e["loss"], e["grad_norm"])])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_bf16_mixed_precision_follows_the_fp32_step(tiny_grit, make_args):
    """bf16 autocast (pooling and losses in fp32) gives the fp32 losses up to bf16 rounding."""
    first = {}
    for bf16 in (False, True):
        trainer = GRITTrainer(str(tiny_grit), args=make_args(max_steps=1, bf16=bf16))
        trainer.train()
        first[bf16] = _history(trainer)[0]
    for key in ("loss_rep", "loss_gen"):
        assert math.isfinite(first[True][key]) and first[True][key] == pytest.approx(first[False][key], rel=3e-2)


def test_bf16_weights_pool_in_fp32(tiny_grit, make_args):
    model = GritLMForCausalLM.from_pretrained(tiny_grit, dtype=torch.bfloat16)
    trainer = GRITTrainer(model, args=make_args(max_steps=1))
    batch = trainer._embedding_batch(0)["queries"]
    with torch.no_grad():
        hidden = model.embedding_forward(batch.input_ids, batch.attention_mask).last_hidden_state
        pooled = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, prefix_lengths=batch.prefix_lengths,
            grit_embed=True,
        )  # fmt: skip
    assert hidden.dtype == torch.bfloat16 and pooled.dtype == torch.float32
    assert_close(pooled, model.pool(hidden.float(), batch.attention_mask, batch.prefix_lengths))


def test_datasets_objects_and_tokenizer(tiny_grit, make_args, tiny_data):
    tokenizer = AutoTokenizer.from_pretrained(tiny_grit)
    embedding = datasets.Dataset.from_json(str(tiny_data["embedding"]))
    generative = datasets.Dataset.from_list([{"prompt": "Hi", "completion": "Hello."}] * 4)
    args = make_args(max_steps=1, embedding_dataset=None, generative_dataset=None)
    trainer = GRITTrainer(
        GritLMForCausalLM.from_pretrained(tiny_grit), args=args, train_dataset=generative,
        embedding_dataset=embedding, processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    # the same examples read from files give the same step
    generative.to_json(str(tiny_data["embedding"].parent / "gen-objects.jsonl"))
    from_files = GRITTrainer(
        str(tiny_grit), args=make_args(max_steps=1, generative_dataset=str(tiny_data["embedding"].parent / "gen-objects.jsonl"))
    )  # fmt: skip
    from_files.train()
    for key in ("loss", "loss_rep", "loss_gen"):
        assert _history(trainer)[0][key] == pytest.approx(_history(from_files)[0][key], rel=1e-6)


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_fused_lm_head_contract(tiny_grit, make_args, tmp_path, packing):
    """What `GRITTrainer._generative_share` reads from TRL's fused LM head (`add_fused_lm_head`, put on the model by
    `SFTTrainer`), against a hand computation from the plain forward's logits: `log_probs` `(batch, seq - 1)` are the
    log-probabilities of the next-token labels (0 where the label is -100) with their gradient, and `label_mask` marks
    the labels that are not -100."""
    path = tmp_path / "gen4.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generative_records(4)))
    args = make_args(
        mode="generative", generative_dataset=str(path), per_device_train_batch_size=4, max_length=512,
        packing=packing,
    )  # fmt: skip
    trainer = GRITTrainer(str(tiny_grit), args=args)
    batches, _ = trainer.get_batch_samples(iter(trainer.get_train_dataloader()), 1, trainer.args.device)
    batch = {k: v for k, v in batches[0].items() if isinstance(v, torch.Tensor)}
    model = trainer.model.train()
    fused = model(**batch, use_cache=False, fused_lm_head=True)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    expected = logits[:, :-1].float().log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    expected = expected.masked_fill(~mask, 0.0)
    assert fused.label_mask.dtype == torch.bool and torch.equal(fused.label_mask, mask)
    assert 0 < int(mask.sum()) < mask.numel() and (labels.shape[0] == 1) == packing
    assert fused.log_probs.shape == labels.shape and torch.all(fused.log_probs[~mask] == 0)
    assert_close(fused.log_probs, expected, rtol=1e-5, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(0.5, 1.5, mask.numel()).view_as(expected)  # a loss that tells the positions apart
    got = torch.autograd.grad((fused.log_probs * weights).sum(), params)
    want = torch.autograd.grad((expected * weights).sum(), params)
    for g, w in zip(got, want):
        assert_close(g, w, rtol=1e-4, atol=1e-5 * w.abs().max().item())


@pytest.mark.parametrize(
    "chunk_size, accumulation, aggregation", [(None, 1, "token"), (2, 2, "sample"), (3, 2, "token")]
)
def test_a_training_step_follows_the_gradient_of_the_written_loss(
    tiny_grit, make_args, chunk_size, accumulation, aggregation
):
    """One SGD step of `GRITTrainer` (through the stock `training_step`) equals a hand step on
    `lambda_rep * mean over micro-steps of InfoNCE + lambda_gen * L_gen(global batch)`, computed in one graph from the
    plain forward (embeddings and logits) with no trainer code: GradCache's chunk backwards, the gradient
    accumulation scaling and the L_gen aggregation over micro-batches all agree with it."""
    lr, lambda_rep, lambda_gen = 0.1, 0.7, 1.3
    args = make_args(
        max_steps=1, optim="sgd", learning_rate=lr, max_grad_norm=0.0, emb_chunk_size=chunk_size,
        gradient_accumulation_steps=accumulation, gen_loss_aggregation=aggregation, lambda_rep=lambda_rep,
        lambda_gen=lambda_gen,
    )  # fmt: skip
    trainer = _recording_trainer()(str(tiny_grit), args=args)
    trainer.seen = []
    reference = GritLMForCausalLM.from_pretrained(tiny_grit).train()
    add_embedding_forward(reference)  # `grit_embed=True`: the model's bidirectional, instruction-excluded pooling
    before = {k: v.detach().clone() for k, v in reference.named_parameters()}
    trainer.train()
    assert len(trainer.seen) == accumulation

    loss = 0.0
    for micro_step in range(accumulation):
        batch = trainer._embedding_batch(micro_step)
        queries, passages = (
            F.normalize(reference(input_ids=f.input_ids, attention_mask=f.attention_mask,
                                  prefix_lengths=f.prefix_lengths, grit_embed=True), dim=-1)
            for f in (batch["queries"], batch["passages"])
        )  # fmt: skip
        loss = loss + lambda_rep * F.cross_entropy(queries @ passages.T / args.temperature, batch["targets"])
    loss = loss / accumulation
    sums, counts = [], []
    for batch in trainer.seen:
        logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
        sums += list((nll * (labels != -100)).sum(-1))
        counts += list((labels != -100).sum(-1))
    if aggregation == "token":
        generative = sum(sums) / sum(counts)
    else:
        generative = sum(s / n for s, n in zip(sums, counts)) / len(sums)
    (loss + lambda_gen * generative).backward()

    trained = dict(trainer.model.named_parameters())
    moved = 0
    for name, weight in before.items():
        grad = reference.get_parameter(name).grad
        expected = weight - lr * grad
        assert_close(trained[name].detach(), expected, rtol=0, atol=1e-6 + 1e-4 * lr * grad.abs().max().item())
        moved += bool((grad != 0).any())
    assert moved > 10
