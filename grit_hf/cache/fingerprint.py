"""The fingerprint of a setup that computes cached states: states may only be reused by an identical setup."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

import torch

from .entries import model_layout

__all__ = ["Fingerprint", "FingerprintMismatchError", "compute_fingerprint"]


class FingerprintMismatchError(ValueError):
    """Stored states were computed by a different model setup than the one asking for them."""


@dataclass(frozen=True)
class Fingerprint:
    """What a set of cached states depends on. Two setups may share states only if all fields are equal.

    Attributes:
        model: the model's name or path (informative; not compared, a moved checkpoint keeps its states).
        config: sha256 of the model config (JSON, sorted keys, `name_or_path` and transformers version removed).
        weights: sha256 of every parameter's name, shape, dtype and a strided sample of its values
            (`weights_hash="full"` in `compute_fingerprint` hashes all bytes); a quantized weight (torchao) by its
            type and its stored tensors (values, scales, zero points), so a quantized model never shares states
            with its dense parent (its config, with the `quantization_config`, differs too).
        tokenizer: sha256 of the tokenizer's serialised vocabulary and special tokens.
        dtype: dtype of the states, e.g. `"torch.bfloat16"`.
        template: the document template the states were computed with.
        attention: `"bidirectional"` or `"causal"`.
        layout: the decoder's layers, key/value heads, head size and vocabulary (`cache.entries.model_layout`),
            which stored entries are checked against (derived from `config`, so not compared on its own).
        storage: how an entry keeps its states: `"dense"` (as computed, in `dtype`) or `"int8"` (8 bits with scales,
            `grit_hf.cache.quantization`); `""` in entries written before the format was recorded (dense). Each entry
            records its own. Not compared: a store reads both formats (a dense entry loads in a store that quantizes,
            an int8 entry is dequantized to `dtype`), and the entry's tensors are checked against the format.
    """

    model: str
    config: str
    weights: str
    tokenizer: str
    dtype: str
    template: str
    attention: str
    layout: str = ""
    storage: str = ""

    _compared = ("config", "weights", "tokenizer", "dtype", "template", "attention")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=None, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        data = json.loads(text)
        return cls(**{f.name: str(data.get(f.name, "")) for f in fields(cls)})

    def differences(self, other: Fingerprint) -> list[str]:
        """Human-readable `field: stored ... != expected ...` lines for the compared fields that differ."""
        lines = []
        for name in self._compared:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                lines.append(f"{name}: stored {theirs!r:.80} != expected {mine!r:.80}")
        return lines

    def matches(self, other: Fingerprint) -> bool:
        return not self.differences(other)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _stored_tensors(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """The plain tensors a weight is stored as: itself, or a quantized weight's (a torchao tensor subclass) values,
    scales and zero points, named `NAME.PART`."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        inner, _ = tensor.__tensor_flatten__()
        return [(f"{name}.{part}[{type(tensor).__name__}]", getattr(tensor, part)) for part in inner]
    return [(name, tensor)]


def _weights_digest(model: torch.nn.Module, full: bool, sample: int = 4096) -> str:
    digest = hashlib.sha256()
    for name, weight in sorted(model.state_dict().items()):
        for part, tensor in _stored_tensors(name, weight):  # a dense weight: itself (the digest of before)
            digest.update(f"{part}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            flat = tensor.detach().reshape(-1)
            if not full and flat.numel() > sample:
                flat = flat[:: max(1, flat.numel() // sample)][:sample]
            digest.update(memoryview(flat.cpu().contiguous().view(torch.uint8).numpy()))
    return digest.hexdigest()


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    payload += json.dumps(sorted(map(str, tokenizer.all_special_tokens)))
    return _sha256(payload.encode())


def compute_fingerprint(model, is_causal: bool, tokenizer=None, weights_hash: str = "sample") -> Fingerprint:
    """The `Fingerprint` of states computed for documents by `model` (a `GritLMForCausalLM`).

    Args:
        model: the GRIT model.
        is_causal: whether the states are computed with causal attention.
        tokenizer: defaults to `model.tokenizer`.
        weights_hash: `"sample"` (name, shape, dtype and a 4096-value sample of each parameter; fast even for 7B
            models) or `"full"` (every byte: any change of any weight is seen). Measured on the default model
            (513 MiB of fp32 weights, one CPU thread): 1.3-1.5 s full, 0.2 s sampled, once per `GritRAG`.
    """
    if weights_hash not in ("sample", "full"):
        raise ValueError(f"Invalid `weights_hash`: {weights_hash!r}. Valid choices are: ('sample', 'full').")
    tokenizer = model.tokenizer if tokenizer is None else tokenizer
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "name_or_path", "transformers_version", "dtype", "torch_dtype"):
        config.pop(volatile, None)
    if isinstance(config.get("text_config"), dict):
        for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
            config["text_config"].pop(volatile, None)
    return Fingerprint(
        model=str(getattr(model, "name_or_path", "") or type(model).__name__),
        config=_sha256(json.dumps(config, sort_keys=True, default=str).encode()),
        weights=_weights_digest(model, full=weights_hash == "full"),
        tokenizer=_tokenizer_digest(tokenizer),
        dtype=str(model.dtype),
        template=model.config.document_template,
        attention="causal" if is_causal else "bidirectional",
        layout=model_layout(model),
    )
