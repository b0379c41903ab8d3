"""The cache loss teaches a model to answer from its own embedding-pass states (CPU, about a minute).

Task ("the last name before the marker"): a document is 12 word tokens: 5 distinct names, one marker `|` and fillers
`x`; at least 2 names come before the marker, at least 1 after it, and the first name after the marker is at least as
close to it as the answer (the last name before it). Question: "who before | ?".

A tiny Llama trained causally on plain-RAG prompts answers through the marker's attention to the most recent names it
has seen. In the bidirectional embedding pass the marker also sees the names after it, the nearest of which is a
distractor, so answers from the cached embedding-pass states go wrong (BEFORE), while plain RAG is right. Then, from
the same weights and for the same steps, `GRITTrainer` with `lambda_cache=1` (AFTER) must answer from the cached states
on >= 90% of held-out documents, and with `lambda_cache=0` (CONTROL) must not. Every accuracy is measured through
`GritRAG.answer` (`mode="doc"` and `mode="rag_doc_query"`), the inference path. Recipe found by a seed sweep (24/24
seeds passed with 800-1200 pretraining steps).
"""

from __future__ import annotations

import copy
import random

import datasets
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import LlamaConfig, PreTrainedTokenizerFast

from grit_hf import GritLMConfig, GritLMForCausalLM, GritRAG
from grit_hf.rag import RAGPrompts

NAMES = [f"n{i}" for i in range(20)]
DOC_LEN, NUM_NAMES, QUESTION = 12, 5, "who before | ?"
SHORT_SUFFIX = {"doc_cached": "\n{user}{query}{assistant}"}  # the reference's long sentence left out


def _example(rng: random.Random) -> tuple[str, str]:
    names = rng.sample(NAMES, NUM_NAMES)
    while True:
        marker = rng.randrange(DOC_LEN)
        slots = sorted(rng.sample([i for i in range(DOC_LEN) if i != marker], NUM_NAMES))
        before, after = [i for i in slots if i < marker], [i for i in slots if i > marker]
        if len(before) >= 2 and after and after[0] - marker <= marker - before[-1]:
            break
    words = ["x"] * DOC_LEN
    words[marker] = "|"
    for name, slot in zip(names, slots):
        words[slot] = name
    return " ".join(words), names[len(before) - 1]


def _tokenizer() -> PreTrainedTokenizerFast:
    words = ["<pad>", "<s>", "</s>", "<unk>", "<|embed|>", "<|user|>", "<|assistant|>", "x", "|", "?", "who", "before"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + NAMES)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<|embed|>", "<|user|>", "<|assistant|>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _plain_rag_rows(model, prompts: RAGPrompts, examples) -> dict[str, list]:
    """Plain-RAG training rows: document part + suffix + answer + end token, loss on the answer and end token only."""
    tokenizer = model.tokenizer
    rows = {"input_ids": [], "labels": []}
    for document, answer in examples:
        prompt = tokenizer(model.config.document_template + document)["input_ids"]
        prompt += tokenizer(prompts.suffix("doc", query=QUESTION), add_special_tokens=False)["input_ids"]
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows["input_ids"].append(prompt + target)
        rows["labels"].append([-100] * len(prompt) + target)
    return rows


def _pretrain(model, rows, steps: int, batch: int = 32, lr: float = 3e-3) -> None:
    """Causal plain-RAG training (not the feature under test): a plain loop, fast on one CPU thread."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    input_ids, labels = torch.tensor(rows["input_ids"]), torch.tensor(rows["labels"])
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(input_ids), (batch,), generator=generator)
        loss = model(input_ids=input_ids[index], labels=labels[index]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()


def _accuracy(model, prompts: RAGPrompts, examples, mode: str) -> float:
    rag = GritRAG(model, cache_attention="bidirectional", prompts=prompts, batch_size=64, verify_positions=False)
    doc_ids = rag.add_documents([document for document, _ in examples])
    right = 0
    for doc_id, (_, answer) in zip(doc_ids, examples):
        result = rag.answer(QUESTION, mode=mode, doc_ids=[doc_id], max_new_tokens=3)
        right += result.text.strip() == answer
    return right / len(examples)


@pytest.mark.slow
def test_cache_loss_teaches_answers_from_embedding_pass_states(tmp_path):
    from grit_hf.trainer import GRITConfig, GRITTrainer

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    model = GritLMForCausalLM(GritLMConfig(text_config=text_config))
    model.tokenizer = tokenizer
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    prompts = RAGPrompts.for_model(model, **SHORT_SUFFIX)
    train = [_example(random.Random(f"train-{i}")) for i in range(32_000)]
    seen = set(train)
    held_out = [e for e in (_example(random.Random(f"held-out-{i}")) for i in range(220)) if e not in seen][:200]
    rows = _plain_rag_rows(model, prompts, train)
    _pretrain(model, rows, steps=1000)

    plain_before = _accuracy(model, prompts, held_out, "rag_doc_query")
    cached_before = _accuracy(model, prompts, held_out, "doc")

    cache_data = datasets.Dataset.from_dict(
        {
            "documents": [[document] for document, _ in train],
            "question": [QUESTION] * len(train),
            "answer": [answer for _, answer in train],
        }
    )
    generative = datasets.Dataset.from_dict(rows)
    results = {}
    for name, lambda_cache in (("after", 1.0), ("control", 0.0)):
        args = GRITConfig(
            output_dir=str(tmp_path / name), mode="generative", lambda_gen=1.0, lambda_cache=lambda_cache,
            cache_prompts=SHORT_SUFFIX, cache_batch_size=32, per_device_train_batch_size=32, max_steps=200,
            learning_rate=1e-3, lr_scheduler_type="constant_with_warmup", warmup_steps=20, max_grad_norm=1.0,
            adam_beta2=0.98, weight_decay=0.0, gen_loss_aggregation="token", bf16=False, use_cpu=True,
            report_to="none", save_strategy="no", logging_steps=50, disable_tqdm=True, seed=0,
            activation_checkpointing=False, dataloader_pin_memory=False,
        )  # fmt: skip
        student = copy.deepcopy(model)
        student.tokenizer = tokenizer
        trainer = GRITTrainer(
            student, args=args, train_dataset=generative, processing_class=tokenizer,
            cache_dataset=cache_data if lambda_cache else None,
        )  # fmt: skip
        trainer.train()
        student.eval()
        results[name] = (
            _accuracy(student, prompts, held_out, "doc"),
            _accuracy(student, prompts, held_out, "rag_doc_query"),
        )

    print(
        f"cache-aware GRIT on {len(held_out)} held-out documents: before plain {plain_before:.3f} / cached "
        f"{cached_before:.3f}; after cached {results['after'][0]:.3f} (plain {results['after'][1]:.3f}); control "
        f"cached {results['control'][0]:.3f} (plain {results['control'][1]:.3f})"
    )
    assert plain_before >= 0.9 and cached_before <= 0.3  # BEFORE: plain RAG right, the embedding states mislead
    assert results["after"][0] >= 0.9 and results["after"][1] >= 0.9  # AFTER: cached answers right, plain kept
    assert results["control"][0] <= 0.4  # CONTROL: the same steps without the cache loss do not get there
