"""Plain chat generation with a GRIT model (the checkpoint's chat template applied), on grit-hf's one generation
engine (`grit_hf.generation.engine.Generator`)."""

from __future__ import annotations

from ..formatting import apply_chat_template, check_messages
from ..modeling_gritlm import GritLMForCausalLM
from .engine import GenerationOptions, GenerationResult, GenerationStream, Generator
from .plan import PromptPlan

__all__ = ["chat"]


def chat(
    model: GritLMForCausalLM,
    messages: str | list[dict[str, str]],
    max_new_tokens: int = 128,
    stream: bool = False,
    return_result: bool = False,
    **options,
) -> str | GenerationResult | GenerationStream:
    """Render `messages` (or one user prompt) with the chat template and answer (greedy unless `temperature > 0`).

    Args:
        model: a `GritLMForCausalLM`.
        messages: a user prompt, or `{"role", "content"}` messages.
        max_new_tokens: the most tokens to generate.
        stream: return a `GenerationStream` of text deltas.
        return_result: return the `GenerationResult` (text and token counts) instead of the text.
        **options: more `GenerationOptions` (`stop`, `temperature`, `top_p`, `seed`).

    Returns:
        The answer text (stripped), or the result / stream as asked.
    """
    if not isinstance(model, GritLMForCausalLM):
        raise TypeError(f"`model` must be a GritLMForCausalLM, got {type(model).__name__}.")
    options = GenerationOptions(max_new_tokens=max_new_tokens, **options)
    prompt = apply_chat_template(model.tokenizer, check_messages(messages), model.config.chat_template)
    pieces = Generator(model).stream(PromptPlan.of(prompt).resolve(model.tokenizer), options)
    if stream:
        return pieces
    result = pieces.consume()
    return result if return_result else result.text.strip()
