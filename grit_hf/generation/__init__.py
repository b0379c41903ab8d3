"""Generation with a GRIT model: one engine for plain chat, `GritRAG`, the integrations, the trainer's cache loss and
the server.

- `segments.py`: prompts made of text and cached key/value states (`Segment`, `CachedSegment`, `Part`);
- `compose.py`: composing a prompt's parts into one cache (cached states re-rotated to their offsets);
- `engine.py`: the decoding loop (`Generator`, `GenerationOptions`, `GenerationResult`, `GenerationStream`);
- `chat.py`: plain chat generation (`chat`).
"""

from __future__ import annotations

from .chat import chat
from .engine import GenerationOptions, GenerationResult, GenerationStream, Generator
from .segments import CachedSegment, Part, Segment, resolve_segments

__all__ = [
    "chat",
    "Generator",
    "GenerationOptions",
    "GenerationResult",
    "GenerationStream",
    "CachedSegment",
    "Part",
    "Segment",
    "resolve_segments",
]
