"""What plain sentence-transformers and transformers make of a checkpoint laid out like GritLM/GritLM-7B (issue 14).

A tiny random Mistral is put into a fake, offline Hugging Face cache as `GritLM/GritLM-7B` (`model_type: mistral`,
`architectures: [MistralForCausalLM]`, an `auto_map` to its own modeling file, no sentence-transformers files). Each
loader runs in its own process, with and without `import grit_hf`, and its embeddings are compared with the
reference GRIT embeddings of the `gritlm` package (bidirectional attention, mean over the text tokens, GritLM-7B's
formats). Also measured: the two artifacts of `grit-hf convert` (the grit-hf checkpoint, and `--stock-config`).

    python benchmarks/plain_loaders_gritlm_layout.py

Random tiny weights: the differences show *that* the loaders differ from GRIT, not how much a trained 7B model's
retrieval suffers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from report import REPO, tests_module

TEXTS = [
    "The capital of France is Paris.",
    "Berlin is the capital of Germany; it has many museums and parks.",
    "chgrp changes the group ownership of files",
]
INSTRUCTION = "Given a question, retrieve passages that answer the question"
QUERY_FORMAT, DOCUMENT_FORMAT = f"<|user|>\n{INSTRUCTION}\n<|embed|>\n", "<|embed|>\n"

MEASURE = """
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
source, reference, mode, loader = sys.argv[1], json.loads(open(sys.argv[2]).read()), sys.argv[3], sys.argv[4]
if mode == "grit_hf":
    import grit_hf
texts, q_format, d_format = reference["texts"], reference["query_format"], reference["document_format"]
result = {}
if loader == "st":
    from sentence_transformers import SentenceTransformer
    st = SentenceTransformer(source, device="cpu")
    result["modules"] = [type(m).__name__ for m in st] + [type(st[0].auto_model).__name__]
    pooling = st[1]
    result["pooling"] = f"{pooling.pooling_mode}, include_prompt={pooling.include_prompt}"
    result["prompts"] = {k: v for k, v in st.prompts.items() if v}
    outputs = {
        "encode_query()": (st.encode_query(texts), "queries"),
        "encode_document()": (st.encode_document(texts), "documents"),
        "encode(prompt=GRIT query format)": (st.encode(texts, prompt=q_format), "queries"),
        "encode(prompt=GRIT document format)": (st.encode(texts, prompt=d_format), "documents"),
    }
else:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    model = AutoModel.from_pretrained(source).eval()
    result["modules"] = [type(model).__name__, type(AutoModelForCausalLM.from_pretrained(source)).__name__]
    result["has_encode"] = hasattr(model, "encode")
    tokenizer = AutoTokenizer.from_pretrained(source)
    outputs = {}
    for name, prefix, key in (("queries", q_format, "queries"), ("documents", d_format, "documents")):
        batch = tokenizer([prefix + t for t in texts], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        outputs[f"mean over all tokens ({name})"] = ((hidden * mask).sum(1) / mask.sum(1)).numpy(), key
for name, (embeddings, key) in outputs.items():
    embeddings = np.asarray(embeddings, dtype=np.float64)
    target = np.asarray(reference[key])
    unit = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    result.setdefault("rows", []).append(
        [name, float(np.abs(embeddings - target).max()), float(np.abs(unit - target).max()),
         float((unit * target).sum(-1).min())]
    )
print(json.dumps(result))
"""


def main() -> int:
    hub_cache = tests_module("hub_cache")
    add_hub_entry, gritlm_7b_layout, hub_environment = (
        hub_cache.add_hub_entry,
        hub_cache.gritlm_7b_layout,
        hub_cache.hub_environment,
    )

    work = Path(tempfile.mkdtemp(prefix="plain-loaders-"))
    env = {**os.environ, **hub_environment(work / "hf-home"), "GRIT_HF_HOME": str(work / "grit-home")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    os.environ.update(env)  # before huggingface_hub is imported: it reads HF_HUB_CACHE once
    import torch

    make_stock_checkpoint = tests_module("tiny").make_stock_checkpoint

    torch.set_num_threads(1)
    mistral = make_stock_checkpoint(work / "stock-mistral", "mistral")
    marker = work / "remote-code-ran"
    snapshot = add_hub_entry(
        work / "hf-home" / "hub", "GritLM/GritLM-7B", gritlm_7b_layout(mistral, work / "l", marker)
    )

    import gritlm

    reference = gritlm.GritLM(str(mistral), attn="bbcc", device="cpu")
    data = {
        "texts": TEXTS,
        "query_format": QUERY_FORMAT,
        "document_format": DOCUMENT_FORMAT,
        "queries": reference.encode(TEXTS, instruction=QUERY_FORMAT).tolist(),
        "documents": reference.encode(TEXTS, instruction=DOCUMENT_FORMAT).tolist(),
    }
    reference_path = work / "reference.json"
    reference_path.write_text(json.dumps(data))
    from grit_hf.cli import main as cli

    cli(["convert", "GritLM/GritLM-7B", str(work / "converted")])
    cli(["convert", "GritLM/GritLM-7B", str(work / "stock-export"), "--stock-config"])

    cases = [
        ("GritLM/GritLM-7B (by name)", "GritLM/GritLM-7B", ["plain", "grit_hf"], ["st", "auto"]),
        ("grit-hf convert output", str(work / "converted"), ["grit_hf"], ["st"]),
        ("grit-hf convert --stock-config output", str(work / "stock-export"), ["plain"], ["st"]),
    ]
    print(
        f"snapshot: {snapshot}\nmax |difference| from the reference GRIT embeddings (gritlm, bbcc), tiny random Mistral"
    )
    for title, source, modes, loaders in cases:
        for mode in modes:
            for loader in loaders:
                run = subprocess.run(
                    [sys.executable, "-c", MEASURE, source, str(reference_path), mode, loader],
                    capture_output=True, text=True, env=env,
                )  # fmt: skip
                if run.returncode:
                    print(f"{title} [{mode}, {loader}] failed:\n{run.stderr[-2000:]}")
                    continue
                result = json.loads(run.stdout.strip().splitlines()[-1])
                label = "import grit_hf" if mode == "grit_hf" else "without grit_hf"
                extra = {k: v for k, v in result.items() if k != "rows"}
                print(f"\n## {title}, {'SentenceTransformer' if loader == 'st' else 'AutoModel'}, {label}: {extra}")
                print("| output | max abs diff | after L2 normalisation | min cosine to GRIT |")
                for name, raw, unit, cosine in result["rows"]:
                    print(f"| {name} | {raw:.3g} | {unit:.3g} | {cosine:.3f} |")
    print(f"\nremote code run: {marker.exists()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
