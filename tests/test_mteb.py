"""The MTEB encoder: mteb's protocol, mteb's GritLM instruction handling, and offline runs on local/mock tasks."""

from __future__ import annotations

import numpy as np
import pytest

mteb = pytest.importorskip("mteb")

from datasets import Dataset  # noqa: E402
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.models.model_implementations.gritlm_models import gritlm_instruction  # noqa: E402
from mteb.models.models_protocols import EncoderProtocol  # noqa: E402
from mteb.types import PromptType  # noqa: E402

from grit_hf import GritLMForCausalLM  # noqa: E402
from grit_hf.evaluation import GritRetriever, RetrievalData, RetrievalEvaluator  # noqa: E402
from grit_hf.mteb import GritMTEBEncoder, grit_model_meta  # noqa: E402

QUERIES = {"q0": "change group ownership", "q1": "list directory contents", "q2": "copy files and directories"}
CORPUS = {
    "d0": "chgrp changes the group ownership of each file to the given group.",
    "d1": "ls lists information about the files in a directory, sorted alphabetically.",
    "d2": "cp copies files and directories from a source to a destination.",
    "d3": "Paris is the capital and largest city of France.",
}
QRELS = {"q0": {"d0": 1}, "q1": {"d1": 1}, "q2": {"d2": 1, "d3": 0}}
INSTRUCTION = "Given a one-line summary, retrieve the manual page it summarizes"


class LocalManRetrieval(AbsTaskRetrieval):
    """A tiny retrieval task held in memory: nothing is downloaded."""

    metadata = TaskMetadata(
        name="GritHFLocalManRetrieval",
        description="Tiny offline retrieval task for grit-hf tests.",
        reference="https://github.com/embeddings-benchmark/mteb",
        dataset={"path": "NA", "revision": "NA"},
        type="Retrieval",
        category="t2t",
        modalities=["text"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        date=("2024-01-01", "2024-01-02"),
        domains=[],
        task_subtypes=[],
        license="cc-by-4.0",
        annotations_creators="derived",
        dialect=["Written"],
        sample_creation="found",
        bibtex_citation="",
        prompt={"query": INSTRUCTION},
    )

    def load_data(self, num_proc: int | None = None, **kwargs) -> None:
        split = RetrievalSplitData(
            queries=Dataset.from_list([{"id": k, "text": v} for k, v in QUERIES.items()]),
            corpus=Dataset.from_list([{"id": k, "text": v} for k, v in CORPUS.items()]),
            relevant_docs=QRELS,
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


@pytest.fixture(scope="module")
def encoder(grit_checkpoint):
    return GritMTEBEncoder(str(grit_checkpoint("llama")), device="cpu")


def test_follows_the_encoder_protocol(encoder):
    assert isinstance(encoder, EncoderProtocol)
    meta = encoder.mteb_model_meta
    assert meta.embed_dim == 64 and meta.similarity_fn_name.value == "cosine" and meta.use_instructions
    assert meta.name.startswith("grit-hf/")
    reloaded = meta.load_model(device="cpu")
    assert isinstance(reloaded, GritMTEBEncoder)


def _encode(encoder, texts, prompt_type, task=LocalManRetrieval):
    loader = [{"text": texts[:2]}, {"text": texts[2:]}]  # mteb's DataLoader yields batches with a "text" column
    return encoder.encode(
        loader, task_metadata=task.metadata, hf_split="test", hf_subset="default", prompt_type=prompt_type
    )


def test_instructions_like_mteb_gritlm(encoder):
    """Queries get the task instruction in GritLM's format, documents none; symmetric tasks instruct both sides."""
    model: GritLMForCausalLM = encoder.model
    assert model.config.format_query_prefix(INSTRUCTION) == gritlm_instruction(INSTRUCTION)
    assert model.config.format_query_prefix("") == gritlm_instruction("")
    texts = list(CORPUS.values())
    queries = _encode(encoder, texts, PromptType.query)
    documents = _encode(encoder, texts, PromptType.document)
    assert np.abs(queries - model.encode(texts, instruction=INSTRUCTION)).max() <= 1e-6
    assert np.abs(documents - model.encode(texts)).max() <= 1e-6
    sts = mteb.get_task("STS12")  # a symmetric task: its instruction on both inputs (prompt_type None)
    instruction = encoder.get_instruction(sts.metadata, None)
    assert instruction and instruction == mteb.models.abs_encoder.AbsEncoder.get_instruction(
        encoder, sts.metadata, None
    )
    assert np.abs(_encode(encoder, texts, None, task=sts) - model.encode(texts, instruction=instruction)).max() <= 1e-6


def test_prompts_dict_overrides(grit_checkpoint):
    encoder = GritMTEBEncoder(str(grit_checkpoint("llama")), prompts_dict={"Retrieval": "Find the page"})
    assert encoder.get_instruction(LocalManRetrieval.metadata, PromptType.query) == "Find the page"
    documents = GritMTEBEncoder(str(grit_checkpoint("llama")), prompts_dict={"document": "Represent the page"})
    assert documents.get_instruction(LocalManRetrieval.metadata, PromptType.document) == "Represent the page"


def test_bad_arguments(grit_checkpoint):
    with pytest.raises(TypeError, match="model_name"):
        GritMTEBEncoder(42)
    with pytest.raises(ValueError, match="batch_size"):
        GritMTEBEncoder(str(grit_checkpoint("llama")), batch_size=0)
    with pytest.raises(TypeError, match="model"):
        grit_model_meta("not a model")


def test_mteb_evaluate_local_task_matches_our_evaluator(encoder):
    result = mteb.evaluate(encoder, LocalManRetrieval(), cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    data = RetrievalData(queries=QUERIES, corpus=CORPUS, qrels=QRELS, query_instruction=INSTRUCTION)
    ours = RetrievalEvaluator(data, metrics=["ndcg@10", "recall@1", "mrr@10"])(GritRetriever(encoder.model))
    assert scores["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    assert scores["recall_at_1"] == pytest.approx(ours["recall@1"], abs=1e-4)
    assert scores["mrr_at_10"] == pytest.approx(ours["mrr@10"], abs=1e-4)


def test_mteb_mock_tasks_run(encoder):
    from mteb.mocks.mock_tasks import MockClassificationTask, MockRerankingTask, MockRetrievalTask, MockSTSTask

    tasks = [MockRetrievalTask(), MockSTSTask(), MockClassificationTask(), MockRerankingTask()]
    result = mteb.evaluate(encoder, tasks, cache=None, raise_error=True, show_progress_bar=False)
    assert sorted(r.task_name for r in result.task_results) == sorted(t.metadata.name for t in tasks)
    scores = {r.task_name: r.scores["test"][0] for r in result.task_results}
    # retrieval: the same nDCG@10 as our evaluator on the task's own data, with mteb's instruction for it
    retrieval = MockRetrievalTask()
    retrieval.load_data()
    split = retrieval.dataset["default"]["test"]
    data = RetrievalData(
        queries={row["id"]: row["text"] for row in split["queries"]},
        corpus={row["id"]: f"{row['title']} {row['text']}".strip() for row in split["corpus"]},
        qrels=split["relevant_docs"],
        query_instruction=encoder.get_instruction(retrieval.metadata, PromptType.query),
    )
    ours = RetrievalEvaluator(data, metrics=["ndcg@10"])(GritRetriever(encoder.model))
    assert scores[retrieval.metadata.name]["ndcg_at_10"] == pytest.approx(ours["ndcg@10"], abs=1e-4)
    # STS: the cosine similarity of each pair, ranked against the gold scores (Spearman), as mteb computes it
    sts = MockSTSTask()
    sts.load_data()
    pairs = sts.dataset["test"]
    instruction = encoder.get_instruction(sts.metadata, None)
    first = encoder.model.encode(list(pairs["sentence1"]), instruction=instruction)
    second = encoder.model.encode(list(pairs["sentence2"]), instruction=instruction)
    cosines = (first * second).sum(axis=1)
    from scipy.stats import spearmanr

    expected = spearmanr(cosines, pairs["score"]).statistic
    assert scores[sts.metadata.name]["cosine_spearman"] == pytest.approx(expected, abs=1e-6)
