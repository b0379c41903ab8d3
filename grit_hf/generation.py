"""Plain chat generation with a GRIT model (the checkpoint's chat template applied)."""

from __future__ import annotations

import torch

from .formatting import apply_chat_template
from .modeling_gritlm import GritLMForCausalLM

__all__ = ["chat"]


@torch.inference_mode()
def chat(
    model: GritLMForCausalLM, messages: str | list[dict[str, str]], max_new_tokens: int = 128, **generate_kwargs
) -> str:
    """Render `messages` (or one user prompt) with the chat template, generate greedily and return the answer text."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be a positive int, got {max_new_tokens!r}.")
    tokenizer = model.tokenizer
    prompt = apply_chat_template(tokenizer, messages, model.config.chat_template)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    generate_kwargs.setdefault("do_sample", False)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, **generate_kwargs)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
