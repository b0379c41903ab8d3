"""The cache loss of cache-aware GRIT training: answer from the embedding pass's own states.

For a RAG example (documents, a question, an answer), the documents' key/value states are taken from the embedding
pass (document template, the model's embedding attention, each document alone at position 0), exactly as `GritRAG`
stores them; the prompt of the caching mode is built by the slot filler inference uses (`RAGPrompts.plan`) and
composed with `grit_hf.generation.compose` (the one code path inference uses: documents re-rotated to their offsets, a
BOS only at the start, the positions chosen by the selective-recomputation setting computed again) and the rest of
the prompt plus the answer runs causally on top. The loss is the next-token cross-entropy on the answer (and its end token), or, for a teacher's
answer, optionally the KL divergence to the teacher's next-token distributions; gradients flow through the embedding
pass. The teacher is the same model in plain-RAG mode: the same token ids, all run as text, causally, without
gradient. Query caching modes take the query's states from its embedding pass the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from transformers import DynamicCache

from ..cache.positions import find_rotary_embedding
from ..cache.states import KVStates, cache_from_layers, split_batch_cache
from ..formatting import pad_right, pad_token_id
from ..generation.compose import continuation_logits
from ..generation.engine import Generator
from ..generation.plan import Cached, PromptPlan, Tokens, special_prefix
from ..generation.recompute import Recompute
from ..rag.prompts import CACHED_QUERY_MODES, RAGPrompts

__all__ = [
    "CacheExample", "CachePrompter", "CacheStream", "activation_checkpointing_paused", "answer_weights", "cache_loss",
    "teacher_answers",
]  # fmt: skip

# Builds the embedding pass's states of right-padded `(input_ids, attention_mask)`: a `DynamicCache` per batch.
StatesFn = Callable[[torch.Tensor, torch.Tensor], DynamicCache]


@dataclass
class CacheExample:
    """One example of the cache loss: the mode's prompt pieces and the answer's token ids."""

    documents: list[str]
    question: str
    answer_ids: list[int]
    mode: str = "doc"
    from_teacher: bool = False


class CachePrompter:
    """Builds the prompt plans of cache-loss examples the way `GritRAG` does at inference (`RAGPrompts.plan`).

    Args:
        model: the (unwrapped) GRIT model; its tokenizer and templates are used.
        prompts: the RAG prompt formats (`RAGPrompts.for_model(model)` by default).
        query_instruction: the instruction of query parts (default: the config's `default_query_instruction`).
        max_length: tokens per document or query part, template included.
        recompute: the selective-recomputation setting of the cached parts (as `GritRAG(recompute=...)`).
    """

    def __init__(
        self, model, prompts: RAGPrompts | None = None, query_instruction: str | None = None, max_length=512,
        recompute: Recompute | None = None,
    ):  # fmt: skip
        self.model = model
        self.tokenizer = model.tokenizer
        self.prompts = prompts if prompts is not None else RAGPrompts.for_model(model)
        self.query_instruction = (
            model.config.default_query_instruction if query_instruction is None else query_instruction
        )
        self.max_length = max_length
        self.prefix = special_prefix(self.tokenizer)
        self.recompute = recompute

    def _inputs(self, example: CacheExample) -> list[tuple[str, list[int]]]:
        """`(key, token ids)` of every part the embedding pass computes: documents (`d0`, `d1`, ...), then the query
        (`q`) in modes that cache it."""
        rows = self.model.tokenize_for_embedding(example.documents, "", self.max_length, warn=False).token_ids
        inputs = [(f"d{index}", ids) for index, ids in enumerate(rows)]
        if example.mode in CACHED_QUERY_MODES:
            query = self.model.tokenize_for_embedding(
                [example.question], self.query_instruction, self.max_length, warn=False
            )
            inputs.append(("q", query.token_ids[0]))
        return inputs

    def plan(self, example: CacheExample, states: dict[str, KVStates] | None = None) -> PromptPlan:
        """The resolved prompt plan of `example` (the answer excluded): cached parts hold `states[key]`, or, when
        `states` is `None`, their token ids (the plain-RAG counterpart, exactly the same ids)."""
        if states is None:
            parts = {key: Tokens(ids, embedding_input=True) for key, ids in self._inputs(example)}
        else:
            parts = {key: Cached(states=value) for key, value in states.items()}
        documents = [parts[f"d{index}"] for index in range(len(example.documents))]
        plan = self.prompts.plan(
            example.mode, example.question, example.documents, documents, parts.get("q"), self.recompute
        )
        return plan.resolve(self.tokenizer, prefix=self.prefix)

    def states(self, examples: Sequence[CacheExample], states_fn: StatesFn) -> list[dict[str, KVStates]]:
        """The embedding pass's states of every part of `examples`, in one padded forward (with gradients if enabled)."""
        inputs = [self._inputs(example) for example in examples]
        rows = [ids for example_inputs in inputs for _, ids in example_inputs]
        input_ids, attention_mask = pad_right(rows, pad_token_id(self.tokenizer), self.model.device)
        cache = states_fn(input_ids, attention_mask)
        split = split_batch_cache(cache, input_ids, [len(ids) for ids in rows], self.model.config.is_causal_embedding)
        result, position = [], 0
        for example_inputs in inputs:
            result.append({key: split[position + i] for i, (key, _) in enumerate(example_inputs)})
            position += len(example_inputs)
        return result


def _signature(example: CacheExample, plan: PromptPlan) -> tuple:
    """Plans with equal signatures have the same shape and are composed as one batch."""
    shape = ((isinstance(i, Tokens), getattr(i, "start", 0), i.num_tokens) for i in plan.items)
    return (example.from_teacher, len(example.answer_ids), *shape)


def _stack(plans: list[PromptPlan]) -> PromptPlan:
    """One batched plan (ids as `[batch, n]` tensors, states concatenated along the batch) from plans of the same
    shape."""
    stacked = []
    for column in zip(*(plan.items for plan in plans)):
        first = column[0]
        if isinstance(first, Tokens):
            stacked.append(Tokens(torch.tensor([list(item.ids) for item in column], dtype=torch.long)))
            continue
        ids = torch.stack([item.states.input_ids for item in column])
        layers = [
            (
                torch.cat([item.states.layers()[i][0] for item in column]),
                torch.cat([item.states.layers()[i][1] for item in column]),
            )
            for i in range(len(first.states.layers()))
        ]
        states = KVStates(ids, cache_from_layers(layers), first.states.is_causal)
        stacked.append(Cached(states=states, start=first.start, end=first.end))
    return PromptPlan(stacked, plans[0].recompute)


@contextlib.contextmanager
def activation_checkpointing_paused(model) -> Iterator[None]:
    """Run `model`'s layers without activation checkpointing inside the block.

    transformers' checkpointed layers drop the cache (`use_cache=False`, `cache=None`) because a replayed layer would
    write it twice. The cache loss needs both: the embedding pass's states, and a cache holding the composed prompt
    that the answer runs on. So its passes run unchecked (TRL turns checkpointing on by default); their memory is
    bounded by `cache_batch_size`, and the representation and generative losses stay checkpointed.
    """
    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    paused = [module for module in modules if getattr(module, "gradient_checkpointing", False) is True]
    for module in paused:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in paused:
            module.gradient_checkpointing = True


def cache_loss(
    forward: Callable,
    states_fn: StatesFn,
    prompter: CachePrompter,
    examples: Sequence[CacheExample],
    rotary_emb: torch.nn.Module,
    teacher_loss: str = "ce",
    answer_half_life: float | None = None,
) -> torch.Tensor:
    """The mean next-token loss over the answer tokens (and end tokens) of `examples`, generated from cached states.
    Examples whose prompts have the same shape are composed as one batch.

    Args:
        forward: the causal LM forward (the possibly wrapped model).
        states_fn: the embedding pass returning states (see `StatesFn`).
        prompter: builds the parts.
        examples: the micro-batch.
        rotary_emb: the model's rotary embedding (to place the states).
        teacher_loss: `"ce"` (cross-entropy on every answer) or `"kl"` (for teacher answers, KL divergence from the
            teacher's next-token distributions to the model's along the answer; cross-entropy for gold answers).
        answer_half_life: aim the loss at the first answer tokens, where answers from cached states part from plain
            RAG's: answer token `t` weighs `0.5 ** (t / answer_half_life)` (the mean is over these weights). `None`
            weighs every token the same.

    Activation checkpointing is paused while it runs (`activation_checkpointing_paused`).
    """
    with activation_checkpointing_paused(forward):
        return _cache_loss(forward, states_fn, prompter, examples, rotary_emb, teacher_loss, answer_half_life)


def answer_weights(length: int, half_life: float | None, device=None) -> torch.Tensor:
    """The weights `[length]` of answer tokens in the cache loss (see `cache_loss`'s `answer_half_life`)."""
    steps = torch.arange(length, dtype=torch.float32, device=device)
    return torch.ones_like(steps) if half_life is None else 0.5 ** (steps / half_life)


def _cache_loss(forward, states_fn, prompter, examples, rotary_emb, teacher_loss, half_life) -> torch.Tensor:
    eos_id = prompter.tokenizer.eos_token_id
    device = prompter.model.device
    groups: dict[tuple, list[tuple[CacheExample, PromptPlan]]] = {}
    for example, states in zip(examples, prompter.states(examples, states_fn)):
        plan = prompter.plan(example, states)
        groups.setdefault(_signature(example, plan), []).append((example, plan))
    total, count = torch.zeros((), device=device), 0
    for members in groups.values():
        group = [example for example, _ in members]
        plan = _stack([example_plan for _, example_plan in members])
        answers = torch.tensor([example.answer_ids for example in group], dtype=torch.long).reshape(len(group), -1)
        logits = continuation_logits(forward, plan, answers, rotary_emb, device).float()
        targets = answers if eos_id is None else torch.cat([answers, torch.full((len(group), 1), eos_id)], dim=1)
        logits = logits[:, : targets.shape[1]]  # without an end token, the prediction after the answer is not used
        if group[0].from_teacher and teacher_loss == "kl":
            with torch.no_grad():
                teacher = continuation_logits(forward, plan.as_text(), answers, None, device).float()
                teacher = teacher[:, : targets.shape[1]].log_softmax(-1)
            losses = F.kl_div(logits.log_softmax(-1), teacher, log_target=True, reduction="none").sum(-1)
        else:
            losses = F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), reduction="none")
        weights = answer_weights(targets.shape[1], half_life, device)
        total = total + (losses.reshape(targets.shape) * weights).sum()
        count = count + float(weights.sum()) * len(group)
    return total / max(count, 1)


@torch.inference_mode()
def teacher_answers(prompter: CachePrompter, examples: Sequence[CacheExample], max_new_tokens: int) -> list[list[int]]:
    """The model's greedy plain-RAG answers (document text in the prompt, causal, no gradient) to `examples`: the
    teacher's targets. One batched `generate` call (left padding) over the plain prompts' token ids."""
    model = prompter.model
    prompts = [[t for item in prompter.plan(example).items for t in item.ids] for example in examples]
    width = max(len(ids) for ids in prompts)
    pad = pad_token_id(prompter.tokenizer)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=model.device)
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=pad,
        )  # fmt: skip
    finally:
        model.train(was_training)
    eos = set(Generator(model).eos_ids)
    answers = []
    for row in output[:, width:].tolist():
        end = next((i for i, token in enumerate(row) if token in eos), len(row))
        answers.append(row[:end])
    return answers


class CacheStream:
    """The cache-loss data stream of `GRITTrainer`: examples by micro-step (a pure function of the seed and the step,
    like the embedding stream), answers tokenized (gold, truncated to `max_answer_tokens`) or taken from the teacher
    the first time an example is drawn, and the loss of a micro-batch.

    Args:
        model: the (unwrapped) GRIT model.
        dataset: rows with `CACHE_COLUMNS` (`grit_hf.trainer.cache_data.load_cache_dataset`).
        sampler: global batches by micro-step (`EmbeddingBatchSampler` over the dataset's sources).
        modes: caching modes, taken in turn over the dataset's rows.
        max_length: tokens per document or query part.
        max_answer_tokens: tokens of teacher answers, and at most of gold answers.
        teacher_loss: `"ce"` or `"kl"` for teacher answers.
        prompts: the RAG prompt formats (default: `RAGPrompts.for_model(model)`).
        answer_half_life: weighs the first answer tokens more (see `cache_loss`).
        recompute: the selective recomputation of the cached parts, trained as inference runs it.
    """

    def __init__(
        self, model, dataset, sampler, modes, max_length: int, max_answer_tokens: int, teacher_loss: str,
        prompts: RAGPrompts | None = None, answer_half_life: float | None = None, recompute: Recompute | None = None,
    ):  # fmt: skip
        self.prompter = CachePrompter(model, prompts=prompts, max_length=max_length, recompute=recompute)
        self.dataset, self.sampler, self.modes = dataset, sampler, list(modes)
        self.max_answer_tokens, self.teacher_loss = max_answer_tokens, teacher_loss
        self.answer_half_life = answer_half_life
        self.rotary_emb = find_rotary_embedding(model)
        self._examples: dict[int, CacheExample] = {}

    def examples(self, indices: Sequence[int]) -> list[CacheExample]:
        """The examples of dataset rows `indices` (teacher answers computed for those drawn the first time)."""
        tokenizer = self.prompter.tokenizer
        missing = []
        for index in map(int, indices):
            if index not in self._examples:
                row = self.dataset[index]
                answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"][: self.max_answer_tokens]
                mode = self.modes[index % len(self.modes)]
                self._examples[index] = CacheExample(
                    row["documents"], row["question"], answer, mode, not row["answer"]
                )
                if not row["answer"]:
                    missing.append(index)
        if missing:
            answers = teacher_answers(self.prompter, [self._examples[i] for i in missing], self.max_answer_tokens)
            for index, answer in zip(missing, answers):
                self._examples[index].answer_ids = answer
        return [self._examples[int(index)] for index in indices]

    def loss(self, forward: Callable, states_fn: StatesFn, micro_step: int, rank: int, world_size: int):
        """This process's cache loss for `micro_step`."""
        examples = self.examples(self.sampler.local_batch(micro_step, rank, world_size))
        return cache_loss(
            forward, states_fn, self.prompter, examples, self.rotary_emb, self.teacher_loss, self.answer_half_life
        )
