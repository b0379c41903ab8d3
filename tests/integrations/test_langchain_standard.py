"""The `langchain-tests` standard unit and integration suites for `GritLMEmbeddings` and `ChatGritLM`, offline on a
tiny random model. Only features ChatGritLM does not have are switched off, through the suites' own properties: tool
calling, structured output, JSON mode, image/audio/PDF/video input and per-call model override."""

from __future__ import annotations

from typing import Any

from integration_helpers import DOCS, tiny_checkpoint
from langchain_core.messages import AIMessage
from langchain_gritlm import ChatGritLM, GritLMEmbeddings
from langchain_tests.integration_tests import ChatModelIntegrationTests, EmbeddingsIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests


class _Embeddings:
    @property
    def embeddings_class(self) -> type[GritLMEmbeddings]:
        return GritLMEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": tiny_checkpoint()}


class TestGritLMEmbeddingsUnit(_Embeddings, EmbeddingsUnitTests):
    pass


class TestGritLMEmbeddingsIntegration(_Embeddings, EmbeddingsIntegrationTests):
    pass


class _Chat:
    @property
    def chat_model_class(self) -> type[ChatGritLM]:
        return ChatGritLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": tiny_checkpoint()}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[str]]:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}


class TestChatGritLMUnit(_Chat, ChatModelUnitTests):
    pass


class TestChatGritLMIntegration(_Chat, ChatModelIntegrationTests):
    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        """Embed documents through `GritLMEmbeddings` on the same path, then ask with their text in the prompt: the
        cached states are read (`cache_read` > 0)."""
        GritLMEmbeddings(model=tiny_checkpoint()).embed_documents(DOCS)
        model = ChatGritLM(**self.chat_model_params)
        prompt = f"Context:\n{DOCS[0]}\n\nQuestion: what is the capital of France?"
        if stream:
            full = None
            for chunk in model.stream(prompt):
                full = chunk if full is None else full + chunk
            message = full
        else:
            message = model.invoke(prompt)
        assert message.usage_metadata["input_token_details"]["cache_read"] > 0
        return message
