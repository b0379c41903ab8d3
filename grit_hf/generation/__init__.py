"""Generation with a GRIT model: one engine for plain chat, `GritRAG`, the integrations, the trainer's cache loss and
the server.

- `plan.py`: the prompt plan (`PromptPlan` of `Text`, `Tokens` and `Cached` items), built once and resolved once;
- `recompute.py`: selective recomputation of cached states (`Recompute`: which positions are computed again);
- `compose.py`: composing a plan into one cache (cached states re-rotated to their offsets, recomputed positions run);
- `engine.py`: the decoding loop (`Generator`, `GenerationOptions`, `GenerationResult`, `GenerationStream`);
- `batched.py`: the decode steps of concurrent streams as one forward pass (`DecodeBatch`);
- `chat.py`: plain chat generation (`chat`).
"""

from __future__ import annotations

from .chat import chat
from .engine import GenerationOptions, GenerationResult, GenerationStream, Generator
from .plan import Cached, PromptPlan, Text, Tokens
from .recompute import RECOMPUTE_RULES, Recompute

__all__ = [
    "chat",
    "Generator",
    "GenerationOptions",
    "GenerationResult",
    "GenerationStream",
    "PromptPlan",
    "Text",
    "Tokens",
    "Cached",
    "Recompute",
    "RECOMPUTE_RULES",
]
