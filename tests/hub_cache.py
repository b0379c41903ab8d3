"""Fake Hugging Face cache entries for tests: a folder laid out exactly as `huggingface_hub` lays out a downloaded
repository (`models--ORG--NAME/blobs/<etag>`, `snapshots/<commit>/<file>` as relative symlinks to the blobs,
`refs/<branch>` holding the commit), so `from_pretrained("ORG/NAME")` resolves it offline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

__all__ = ["add_hub_entry", "gritlm_7b_layout", "hub_environment"]


def _etag(path: Path) -> str:
    """The blob name the Hub uses: the sha256 of LFS files (weights), the git blob sha1 of the others."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def add_hub_entry(cache: str | os.PathLike, repo_id: str, source: str | os.PathLike, branch: str = "main") -> Path:
    """Put the files of the folder `source` into the HF hub cache `cache` as a snapshot of `repo_id` on `branch`
    (the commit is a hash of the content). Returns the snapshot folder."""
    cache, source = Path(cache), Path(source)
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    files = sorted(p for p in source.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for file in files:
        digest.update(str(file.relative_to(source)).encode() + b"\0" + _etag(file).encode())
    commit = digest.hexdigest()
    snapshot = repo / "snapshots" / commit
    for file in files:
        relative = file.relative_to(source)
        blob = repo / "blobs" / _etag(file)
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / branch).write_text(commit)
    return snapshot


def gritlm_7b_layout(stock_mistral: str | os.PathLike, target: str | os.PathLike, marker: str | os.PathLike) -> Path:
    """A copy of a tiny stock Mistral checkpoint laid out like GritLM/GritLM-7B: `model_type: mistral`,
    `architectures: [MistralForCausalLM]`, an `auto_map` to its own `modeling_gritlm7b.py` (which writes `marker` if it
    is ever run), no sentence-transformers files."""
    target = Path(target)
    shutil.copytree(stock_mistral, target)
    config = json.loads((target / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    config["auto_map"] = {
        "AutoModel": "modeling_gritlm7b.MistralModel",
        "AutoModelForCausalLM": "modeling_gritlm7b.MistralForCausalLM",
        "AutoModelForSequenceClassification": "modeling_gritlm7b.MistralForSequenceClassification",
    }
    (target / "config.json").write_text(json.dumps(config, indent=2))
    (target / "modeling_gritlm7b.py").write_text(
        f"open({str(marker)!r}, 'w').write('remote code ran')\nraise SystemExit('remote code must not run')\n"
    )
    return target


def hub_environment(home: str | os.PathLike) -> dict[str, str]:
    """Environment variables of a process that reads the HF cache under `home` offline."""
    home = Path(home)
    return {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
