"""The cache loss: the trainer composes a RAG prompt exactly as `GritRAG` does, its loss equals a hand computation,
gradients reach the embedding pass, teacher answers are the plain-RAG answers, and checkpoints record the training."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F
from transformers import DynamicCache

from grit_hf import GritLMForCausalLM, GritRAG
from grit_hf.generation.compose import close_with_text, compose
from grit_hf.generation.plan import Cached, PromptPlan
from grit_hf.trainer.cache_loss import CacheExample, CachePrompter, cache_loss, teacher_answers

from .helpers import write_jsonl

DOCS = ["The capital of France is Paris, a city on the Seine.", "cp copies files and directories."]
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def model(tiny_grit):
    torch.manual_seed(0)
    return GritLMForCausalLM.from_pretrained(tiny_grit).eval()


def _states_fn(model):
    return lambda ids, mask: model.embedding_forward(ids, mask, use_cache=True).cache


@pytest.mark.parametrize("mode", ["doc", "query", "query_doc", "doc_query"])
def test_trainer_composes_the_same_prompt_as_gritrag(model, mode):
    rag = GritRAG(model, cache_attention="bidirectional")
    doc_ids = rag.add_documents(DOCS)
    rag_plan = rag.resolve(rag.build_plan(QUESTION, mode, doc_ids))
    prompter = CachePrompter(model, prompts=rag.prompts, query_instruction=rag.query_instruction)
    example = CacheExample(DOCS, QUESTION, [], mode)
    with torch.no_grad():
        states = prompter.states([example], _states_fn(model))[0]
    trainer_plan = prompter.plan(example, states)
    # the same plan: the same items, in order, standing for the same ids (cached or not), with the same setting
    assert [type(i) for i in trainer_plan.items] == [type(i) for i in rag_plan.items]
    assert [i.as_tokens().ids if isinstance(i, Cached) else i.ids for i in trainer_plan.items] == [
        i.as_tokens().ids if isinstance(i, Cached) else i.ids for i in rag_plan.items
    ]
    assert trainer_plan.as_text() == rag_plan.as_text() and trainer_plan.recompute == rag_plan.recompute
    rotary = rag.generator.rotary_emb
    with torch.no_grad():
        ours = compose(model, PromptPlan(close_with_text(trainer_plan.items)), DynamicCache(), rotary, model.device)
        theirs = compose(model, PromptPlan(close_with_text(rag_plan.items)), DynamicCache(), rotary, model.device)
    assert ours.position == theirs.position and ours.cache_read == theirs.cache_read > 0
    for mine, reference in zip(ours.cache.layers, theirs.cache.layers):
        torch.testing.assert_close(mine.keys, reference.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine.values, reference.values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-4, atol=1e-4)


def test_loss_equals_a_hand_computation_and_reaches_the_embedding_pass(model):
    """One document: its bidirectional states at positions 0..n-1 (no re-rotation), then suffix + answer causally;
    cross-entropy on the answer and the end token."""
    prompter = CachePrompter(model)
    answer = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    example = CacheExample(DOCS[:1], QUESTION, answer, "doc")
    model.zero_grad()
    loss = cache_loss(model, _states_fn(model), prompter, [example], find_rotary(model))
    loss.backward()
    decoder = model.model
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters() if p.requires_grad)

    doc_ids = model.tokenize_for_embedding(DOCS[:1], "", 512).token_ids[0]
    suffix = prompter.prompts.suffix("doc", query=QUESTION)
    suffix_ids = model.tokenizer(suffix, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        states = decoder(input_ids=torch.tensor([doc_ids]), is_causal=False, use_cache=True).cache
        rest = suffix_ids + answer
        positions = torch.arange(len(doc_ids), len(doc_ids) + len(rest)).unsqueeze(0)
        logits = model(input_ids=torch.tensor([rest]), position_ids=positions, cache=states, use_cache=True).logits
        targets = torch.tensor(answer + [model.tokenizer.eos_token_id])
        expected = F.cross_entropy(logits[0, len(suffix_ids) - 1 :].float(), targets)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)


def find_rotary(model):
    from grit_hf.cache.positions import find_rotary_embedding

    return find_rotary_embedding(model)


@pytest.mark.parametrize("mode", ["doc", "query"])
def test_causal_embedding_states_make_the_cache_loss_the_plain_loss(tiny_grit, mode):
    """With causal embedding attention and one cached part first in the prompt, the cached states are the plain
    prompt's: the KL to the teacher is 0 and the cross-entropy equals the plain prompt's."""
    model = GritLMForCausalLM.from_pretrained(tiny_grit).eval()
    model.config.embedding_attention = "causal"
    prompter = CachePrompter(model)
    example = CacheExample(DOCS[:1], QUESTION, [], mode, from_teacher=True)
    example.answer_ids = teacher_answers(prompter, [example], max_new_tokens=5)[0]
    with torch.no_grad():
        kl = cache_loss(model, _states_fn(model), prompter, [example], find_rotary(model), teacher_loss="kl")
        ce = cache_loss(model, _states_fn(model), prompter, [example], find_rotary(model), teacher_loss="ce")
        from grit_hf.generation.compose import continuation_logits

        logits = continuation_logits(model, prompter.plan(example), example.answer_ids, None, model.device)[0]
        targets = torch.tensor(example.answer_ids + [model.tokenizer.eos_token_id])
    assert abs(float(kl)) < 1e-5
    torch.testing.assert_close(ce, F.cross_entropy(logits.float(), targets), rtol=1e-4, atol=1e-4)


def test_teacher_answers_are_the_plain_rag_answers(model):
    rag = GritRAG(model, cache_attention="causal")
    doc_ids = rag.add_documents(DOCS)
    plain = rag.answer(QUESTION, mode="rag_doc_query", doc_ids=doc_ids, max_new_tokens=6)
    prompter = CachePrompter(model, prompts=rag.prompts)
    answers = teacher_answers(prompter, [CacheExample(DOCS, QUESTION, [], "doc")], max_new_tokens=6)
    assert answers == [plain.token_ids]


def test_trainer_trains_with_the_cache_loss_and_records_it(make_args, tiny_grit, tmp_path):
    from grit_hf.trainer import GRITTrainer

    data = write_jsonl(
        tmp_path / "rag.jsonl",
        [
            {"documents": DOCS[:1], "question": QUESTION, "answer": "Paris"},
            {"documents": DOCS, "question": "What does cp do?"},
            {"documents": "ls lists directories.", "question": "What does ls do?", "answer": "It lists them."},
            {"documents": [DOCS[1]], "question": "Which command copies files?"},
        ],
    )
    overrides = dict(lambda_cache=0.5, cache_dataset=str(data), cache_batch_size=2, cache_modes=["doc", "query_doc"])
    args = make_args(**overrides)
    trainer = GRITTrainer(str(tiny_grit), args=args)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss_cache" in entry]
    assert len(logged) == 3 and all(entry["loss_cache"] > 0 for entry in logged)
    assert trainer._cache_stream.prompter.max_length == args.passage_max_length
    longer = GRITTrainer(str(tiny_grit), args=make_args(**{**overrides, "cache_document_max_length": 12}))
    assert longer._cache_stream.prompter.max_length == 12
    assert all(len(ids) <= 12 for _, ids in longer._cache_stream.prompter._inputs(CacheExample(DOCS, QUESTION, [])))
    trainer.save_model(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["cache_attention"] == "bidirectional"
    assert GritRAG(GritLMForCausalLM.from_pretrained(tmp_path / "saved")).cache_attention == "bidirectional"

    recomputing = GRITTrainer(
        str(tiny_grit), args=make_args(**overrides, cache_recompute="deviation:0.3", max_steps=1)
    )
    recomputing.train()
    assert any(entry.get("loss_cache", 0) > 0 for entry in recomputing.state.log_history)
    recomputing.save_model(str(tmp_path / "recomputing"))
    assert json.loads((tmp_path / "recomputing" / "config.json").read_text())["cache_recompute"] == "deviation:0.3"
    rag = GritRAG(GritLMForCausalLM.from_pretrained(tmp_path / "recomputing"))
    assert str(rag.recompute) == "deviation:0.3"  # inference uses the setting the checkpoint was trained with


@pytest.mark.parametrize("mode", ["doc", "query"])
def test_recomputing_every_cached_position_makes_the_cache_loss_the_plain_loss(model, mode):
    """The cache loss trains with selective recomputation as inference runs it: recomputing every cached position
    (r = 1) gives the plain prompt's states, so the KL to the teacher is 0 and the cross-entropy is the plain one."""
    from grit_hf.generation.compose import continuation_logits
    from grit_hf.generation.recompute import Recompute

    prompter = CachePrompter(model, recompute=Recompute(1.0, "random"))
    example = CacheExample(DOCS[:1], QUESTION, [], mode, from_teacher=True)
    example.answer_ids = teacher_answers(prompter, [example], max_new_tokens=5)[0]
    with torch.no_grad():
        kl = cache_loss(model, _states_fn(model), prompter, [example], find_rotary(model), teacher_loss="kl")
        ce = cache_loss(model, _states_fn(model), prompter, [example], find_rotary(model), teacher_loss="ce")
        logits = continuation_logits(model, prompter.plan(example), example.answer_ids, None, model.device)[0]
    targets = torch.tensor(example.answer_ids + [model.tokenizer.eos_token_id])
    prompter.recompute = None
    with torch.no_grad():  # the control: without recomputation the states differ (a random model: a small KL)
        control = float(cache_loss(model, _states_fn(model), prompter, [example], find_rotary(model), "kl"))
    assert abs(float(kl)) < 1e-8 < 1e-6 < control
    torch.testing.assert_close(ce, F.cross_entropy(logits.float(), targets), rtol=1e-5, atol=1e-6)


def test_cache_settings_and_data_are_checked(make_args, tiny_grit, tmp_path):
    from grit_hf.trainer import GRITTrainer
    from grit_hf.trainer.cache_data import load_cache_dataset

    with pytest.raises(ValueError, match="`cache_modes`"):
        make_args(cache_modes=["rag_doc_query"])
    with pytest.raises(ValueError, match="`cache_teacher_loss`"):
        make_args(cache_teacher_loss="mse")
    with pytest.raises(ValueError, match="`lambda_cache`"):
        make_args(lambda_cache=-1.0)
    with pytest.raises(ValueError, match="cache data"):
        GRITTrainer(str(tiny_grit), args=make_args(lambda_cache=1.0))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"documents": [], "question": "q"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:1: `documents`"):
        load_cache_dataset(str(bad))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"query": "chgrp", "pos": ["chgrp changes groups."]}])
    with pytest.raises(ValueError, match="cache_question_template"):
        load_cache_dataset(str(pairs))
    rows = load_cache_dataset(str(pairs), question_template="What does {query} do?")
    assert rows[0] == {
        "documents": ["chgrp changes groups."],
        "question": "What does chgrp do?",
        "answer": "",
        "source": rows[0]["source"],
    }


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_cache_loss_under_activation_checkpointing_follows_the_plain_run(make_args, tiny_grit, tmp_path, bf16):
    """TRL's `SFTConfig` turns activation checkpointing on by default, and transformers then drops the cache in every
    checkpointed layer: the cache loss must still get the embedding pass's states and compose its prompts on them,
    so the run follows the one without checkpointing (bf16 autocast on CPU too)."""
    from grit_hf.trainer import GRITTrainer

    data = write_jsonl(
        tmp_path / "rag.jsonl",
        [
            {"documents": DOCS[:1], "question": QUESTION, "answer": "Paris"},
            {"documents": DOCS, "question": "What does cp do?", "answer": "It copies files."},
        ],
    )
    logs = {}
    for checkpointing in (False, True):
        args = make_args(
            lambda_cache=1.0, cache_dataset=str(data), cache_batch_size=2, activation_checkpointing=checkpointing,
            bf16=bf16, max_steps=2, output_dir=str(tmp_path / f"out-{checkpointing}"),
        )  # fmt: skip
        torch.manual_seed(0)
        trainer = GRITTrainer(str(tiny_grit), args=args)
        trainer.train()
        logs[checkpointing] = [entry for entry in trainer.state.log_history if "loss_cache" in entry]
    assert len(logs[True]) == len(logs[False]) == 2
    for plain, checkpointed in zip(logs[False], logs[True]):
        for key in ("loss_cache", "loss_rep", "loss_gen"):
            assert checkpointed[key] == pytest.approx(plain[key], rel=1e-4 if not bf16 else 2e-2)


def test_answer_half_life_weighs_the_first_answer_tokens_as_written(model):
    """With `answer_half_life`, the loss is the weighted mean of the per-token cross-entropies (hand computation from
    the unweighted per-token losses: weights 0.5 ** (t / h))."""
    from grit_hf.trainer.cache_loss import answer_weights

    prompter = CachePrompter(model)
    answer = model.tokenizer(" Paris is on the Seine", add_special_tokens=False)["input_ids"]
    example = CacheExample(DOCS[:1], QUESTION, answer, "doc")
    with torch.no_grad():
        plan = prompter.plan(example, prompter.states([example], _states_fn(model))[0])
        from grit_hf.generation.compose import continuation_logits

        logits = continuation_logits(model, plan, answer, find_rotary(model), model.device)[0].float()
        targets = torch.tensor(answer + [model.tokenizer.eos_token_id])
        per_token = F.cross_entropy(logits, targets, reduction="none")
        weighted = cache_loss(model, _states_fn(model), prompter, [example], find_rotary(model), answer_half_life=2.0)
    weights = torch.tensor([0.5 ** (t / 2.0) for t in range(len(targets))])
    torch.testing.assert_close(answer_weights(len(targets), 2.0), weights)
    torch.testing.assert_close(weighted, (per_token * weights).sum() / weights.sum(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(weighted, per_token.mean(), rtol=1e-3)
