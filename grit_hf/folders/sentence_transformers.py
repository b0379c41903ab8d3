"""Every GRIT checkpoint is also a sentence-transformers model.

`GritLMPreTrainedModel.save_pretrained` (and so `save_grit_checkpoint`, `convert_checkpoint`, the default model and
the trainer) calls `write_checkpoint_files` once, which adds the files sentence-transformers reads. They name only
stock modules:

- `modules.json`: `Transformer` (the registered GRIT `AutoModel`, whose forward is bidirectional and returns fp32
  hidden states) -> `Pooling("mean", include_prompt=False)` (mean over the text tokens only) -> `Normalize`;
- `sentence_bert_config.json`: a text-only modality config (the tokenizer's chat template is for generation; through
  it ST would render texts as chat messages and could not exclude the prompt from pooling) and `max_seq_length`;
- `config_sentence_transformers.json`: prompts built from the checkpoint's own templates (`query` = the default
  retrieval instruction, `document` = the no-instruction format, a few named tasks), cosine similarity, and
  `default_prompt_name="document"` so that a plain `encode` matches `model.encode(texts)`;
- `gritlm_shim.py` plus an `auto_map` in `config.json`, so that a process that never imported grit_hf can load the
  folder with `trust_remote_code=True` (sentence-transformers, `AutoModel`, `AutoModelForCausalLM`). The shim only
  imports grit_hf (which must be installed); no model code is copied.

The weights and the LM head are untouched: the same folder still generates with `AutoModelForCausalLM`.

Example:

```python
>>> import grit_hf
>>> from sentence_transformers import SentenceTransformer
>>> st = SentenceTransformer("path/to/grit-checkpoint")
>>> st.encode_query(["how do I change a file's group?"]).shape, st.encode_document(["chgrp changes ..."]).shape
((1, 576), (1, 576))
```
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from ..configuration_gritlm import GritLMConfig
from ..formatting import count_prefix_tokens
from ..validation import check_positive_int

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.get_logger(__name__)

__all__ = [
    "TASK_INSTRUCTIONS",
    "SHIM_MODULE",
    "write_checkpoint_files",
    "add_sentence_transformers_files",
    "write_remote_code_shim",
    "sentence_transformers_prompts",
    "grit_prompt",
]

SHIM_MODULE = "gritlm_shim"
SHIM_AUTO_MAP = {
    "AutoConfig": f"{SHIM_MODULE}.GritLMConfig",
    "AutoModel": f"{SHIM_MODULE}.GritLMModel",
    "AutoModelForCausalLM": f"{SHIM_MODULE}.GritLMForCausalLM",
}
# Subclasses, not re-exports: transformers tags a class loaded as remote code with `register_for_auto_class`, and a
# tagged class's *module file* is copied next to every later save. Tagging grit_hf's own classes would copy grit_hf
# source files into checkpoints; tagging these empty subclasses copies only this shim.
SHIM_SOURCE = '''"""Remote-code shim written by grit-hf: lets `trust_remote_code=True` load this GRIT checkpoint in a process that
never imported grit_hf. It only imports the installed package (`pip install grit-hf`); no model code lives here."""

import grit_hf


class GritLMConfig(grit_hf.GritLMConfig):
    pass


class GritLMModel(grit_hf.GritLMModel):
    pass


class GritLMForCausalLM(grit_hf.GritLMForCausalLM):
    pass
'''

# Named prompts besides `query`/`document`, in the style of GritLM's evaluation instructions (domain, intent, unit).
TASK_INSTRUCTIONS: dict[str, str] = {
    "web_search_query": "Given a web search query, retrieve relevant passages that answer the query",
    "duplicate_question": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "fact_checking": "Given a claim, retrieve documents that support or refute the claim",
    "sts": "Retrieve semantically similar text",
    "bitext_mining": "Retrieve parallel sentences",
    "clustering": "Identify the topic or theme of the given text",
}

_TEXT_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}


def grit_prompt(config: Any, instruction: str = "") -> str:
    """The sentence-transformers `prompt` that equals `model.encode(..., instruction=instruction)`: the checkpoint's
    query template around `instruction`, or its document template when `instruction` is empty."""
    config = getattr(config, "config", config)
    if not isinstance(config, GritLMConfig):
        raise TypeError(f"`config` must be a GritLMConfig or a GRIT model, got {type(config).__name__}.")
    if not isinstance(instruction, str):
        raise TypeError(f"`instruction` must be a str, got {type(instruction).__name__}.")
    return config.format_query_prefix(instruction)


def sentence_transformers_prompts(
    config: GritLMConfig, task_instructions: dict[str, str] | None = None
) -> dict[str, str]:
    """The `prompts` of `config_sentence_transformers.json`: `query`, `document` and one per named task."""
    task_instructions = TASK_INSTRUCTIONS if task_instructions is None else task_instructions
    if not isinstance(task_instructions, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in task_instructions.items()
    ):
        raise TypeError("`task_instructions` must be a dict of prompt names to non-empty instruction strings.")
    prompts = {"query": grit_prompt(config, config.default_query_instruction), "document": grit_prompt(config)}
    for name, instruction in task_instructions.items():
        if name in prompts:
            raise ValueError(f"`task_instructions` must not redefine the {name!r} prompt.")
        prompts[name] = grit_prompt(config, instruction)
    return prompts


def _versions() -> dict[str, str]:
    versions = {}
    for key, distribution in (("sentence_transformers", "sentence-transformers"), ("transformers", "transformers")):
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        versions["pytorch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pass
    return versions


def _write_text(path: Path, text: str) -> None:
    """Write atomically, so a process loading the folder at the same time never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _module_specs(config: GritLMConfig) -> list[tuple[str, str, dict[str, Any] | None]]:
    """`(folder, class name, config)` of each sentence-transformers module of a GRIT checkpoint: the registered GRIT
    `AutoModel` (`Transformer`, in the root folder) -> mean over the text tokens only (`Pooling`) -> `Normalize`."""
    pooling = {
        "embedding_dimension": config.text_config.hidden_size,
        "pooling_mode": config.pooling_method,
        "include_prompt": False,
    }
    specs = [("", "Transformer", None), ("1_Pooling", "Pooling", pooling)]
    if config.normalize:
        specs.append(
            (
                "2_Normalize",
                "Normalize",
                {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
            )
        )
    return specs


# sentence-transformers' own module classes by name (their import paths are what `modules.json` records).
_ST_CLASS_PATHS = {
    "Transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    "Normalize": "sentence_transformers.base.modules.normalize.Normalize",
}


def _st_classes() -> dict[str, type] | None:
    try:
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:
        return None
    return {"Transformer": Transformer, "Pooling": Pooling, "Normalize": Normalize}


def _write_module_configs(output_dir: Path, config: GritLMConfig, classes: dict[str, type] | None = None) -> None:
    """Write `modules.json` and the Pooling/Normalize configs.

    With sentence-transformers installed, its own module classes save their configs and give the class paths (the
    Transformer module is not built here: that would load the weights again; its `sentence_bert_config.json` is
    written by the caller). Without it (grit-hf does not need it), the same bytes are written from `_module_specs`
    and `_ST_CLASS_PATHS` (`tests/folders/test_sentence_transformers.py` checks that both write the same files, and that
    `SentenceTransformer.save` writes them too). Files are staged and moved into place, so a process loading the
    folder meanwhile never reads half a file."""
    classes = _st_classes() if classes is None else classes
    entries = []
    for idx, (folder, name, module_config) in enumerate(_module_specs(config)):
        path = _ST_CLASS_PATHS[name] if not classes else f"{classes[name].__module__}.{classes[name].__name__}"
        entries.append({"idx": idx, "name": str(idx), "path": folder, "type": path})
        if module_config is None:
            continue
        target = output_dir / folder
        staging = output_dir / f".{folder}.{os.getpid()}.tmp"
        staging.mkdir(parents=True, exist_ok=True)
        if classes:
            classes[name](**module_config).save(str(staging))
        else:  # as sentence-transformers' `Module.save_config` writes it
            (staging / "config.json").write_text(json.dumps(module_config, indent=4), encoding="utf-8")
        target.mkdir(parents=True, exist_ok=True)
        for file in staging.iterdir():
            os.replace(file, target / file.name)
        staging.rmdir()
    _write_text(output_dir / "modules.json", json.dumps(entries, indent=2))  # as `SentenceTransformer.save` does


def _grit_config_json(output_dir: Path) -> dict[str, Any]:
    """The `config.json` of a saved GRIT checkpoint folder; `ValueError` if `output_dir` is not one."""
    config_path = output_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"`output_dir` must hold a saved GRIT checkpoint (config.json), got {str(output_dir)!r}.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != GritLMConfig.model_type:
        raise ValueError(
            f"{output_dir} holds a {config.get('model_type')!r} checkpoint, not a GRIT one; convert it first with "
            "`grit_hf.convert_checkpoint`."
        )
    return config


def write_remote_code_shim(output_dir: str | os.PathLike) -> None:
    """Write `gritlm_shim.py` into a saved GRIT checkpoint and point `config.json`'s `auto_map` at it (idempotent)."""
    output_dir = Path(output_dir)
    config = _grit_config_json(output_dir)
    shim_path = output_dir / f"{SHIM_MODULE}.py"
    if not shim_path.is_file() or shim_path.read_text(encoding="utf-8") != SHIM_SOURCE:
        _write_text(shim_path, SHIM_SOURCE)
    auto_map = dict(config.get("auto_map") or {})
    if any(auto_map.get(key) != value for key, value in SHIM_AUTO_MAP.items()):
        auto_map.update(SHIM_AUTO_MAP)
        config["auto_map"] = auto_map
        _write_json(output_dir / "config.json", config)


def add_sentence_transformers_files(
    output_dir: str | os.PathLike,
    config: GritLMConfig | None = None,
    *,
    task_instructions: dict[str, str] | None = None,
    max_seq_length: int | None = 512,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Make a saved GRIT checkpoint folder a sentence-transformers model (and loadable with `trust_remote_code`).

    Use it on folders saved before this writer existed; `write_checkpoint_files` runs it on every new checkpoint.

    Args:
        output_dir: a GRIT checkpoint folder (`config.json` with `model_type="gritlm"`).
        config: its `GritLMConfig` (read from `output_dir` when `None`).
        task_instructions: named prompts besides `query`/`document` (default: `TASK_INSTRUCTIONS`).
        max_seq_length: tokens per text in sentence-transformers, prompt included (512 like `model.encode`;
            `None` keeps the tokenizer's limit).
        tokenizer: the checkpoint's tokenizer (read from `output_dir` when `None`, if it has one). Without a pad token,
            sentence-transformers is told to pad with the end token, as `model.encode` does.

    Returns:
        `output_dir` as a `Path`.
    """
    output_dir = Path(output_dir)
    if config is None:
        _grit_config_json(output_dir)
        config = GritLMConfig.from_pretrained(output_dir)
    if not isinstance(config, GritLMConfig):
        raise TypeError(f"`config` must be a GritLMConfig, got {type(config).__name__}.")
    check_positive_int(max_seq_length, "max_seq_length", allow_none=True)
    if config.pooling_method == "weightedmean":
        # ST's weightedmean counts positions from the first token, GRIT's from the first text token.
        logger.warning(
            f"Not writing sentence-transformers files to {output_dir}: its `pooling_method='weightedmean'` has no "
            "exact sentence-transformers equivalent. Use `model.encode` for this checkpoint."
        )
        for stale in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"):
            (output_dir / stale).unlink(missing_ok=True)
        return output_dir

    _write_module_configs(output_dir, config)
    transformer_config: dict[str, Any] = {
        "transformer_task": "feature-extraction",
        "modality_config": _TEXT_MODALITY,
        "module_output_name": "token_embeddings",
    }
    if max_seq_length is not None:
        transformer_config["max_seq_length"] = max_seq_length
    prompts = sentence_transformers_prompts(config, task_instructions)
    tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(output_dir)
    if tokenizer is not None:
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            transformer_config["processor_kwargs"] = {"pad_token": tokenizer.eos_token}
        _check_prompt_lengths(tokenizer, prompts)
    _write_json(output_dir / "sentence_bert_config.json", transformer_config)
    _write_json(
        output_dir / "config_sentence_transformers.json",
        {
            "__version__": _versions(),
            "model_type": "SentenceTransformer",
            "prompts": prompts,
            "default_prompt_name": "document",
            "similarity_fn_name": "cosine",
        },
    )
    return output_dir


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase | None:
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _check_prompt_lengths(tokenizer: PreTrainedTokenizerBase, prompts: dict[str, str]) -> None:
    """Warn if sentence-transformers would count a prompt's tokens differently from `encode` (it drops any trailing
    special token, `encode` only an appended end token), i.e. if a template ends with a special token."""
    special = set(tokenizer.all_special_ids)
    for name, prompt in prompts.items():
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        st_length = len(ids) - (1 if ids and ids[-1] in special else 0)
        if st_length != count_prefix_tokens(tokenizer, prompt):
            logger.warning(
                f"The {name!r} prompt {prompt!r} ends with a special token: sentence-transformers will pool that "
                "token, `encode` does not. End the templates with plain text (e.g. a newline) for equal numbers."
            )


def write_checkpoint_files(
    output_dir: str | os.PathLike, config: GritLMConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> None:
    """Everything a saved GRIT checkpoint folder needs besides weights, config and tokenizer: the remote-code shim
    (and `auto_map`), a generation config that keeps the KV cache on (a folder saved from the embedding class, e.g. by
    `SentenceTransformer.save`, which turns `use_cache` off, must still generate with its cache), and the
    sentence-transformers files. Called once by every `save_pretrained` of a GRIT model."""
    output_dir = Path(output_dir)
    write_remote_code_shim(output_dir)
    generation_config_path = output_dir / "generation_config.json"
    if not generation_config_path.is_file():
        from transformers import GenerationConfig

        generation_config = GenerationConfig.from_model_config(config)
        generation_config.use_cache = True
        generation_config.save_pretrained(output_dir)
    add_sentence_transformers_files(output_dir, config, tokenizer=tokenizer)
