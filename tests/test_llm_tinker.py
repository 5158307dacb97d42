"""The Tinker sampler as an LLM provider, against a stand-in for ServiceClient / SamplingClient at the SDK
boundary: the stand-in returns the SDK's own future and response types (`SampleResponse`,
`SampledSequence`) and raises the SDK's own exceptions."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tinker
from tinker.types import SampledSequence, SampleResponse

from metaclaw_mcp.llm import ChatMessage, LLMUnavailable
from metaclaw_mcp.llm.tinker_sampler import TinkerSamplerModel
from metaclaw_mcp.training.render import load_tokenizer
from test_tinker_backend import RecordingFuture

pytestmark = pytest.mark.anyio
TOKENIZER = str(Path(__file__).parent / "data" / "smollm2-tokenizer")


class StandInSampler:
    def __init__(self, service: StandInService, path: str | None):
        self.service, self.path = service, path

    def sample(self, prompt: tinker.ModelInput, num_samples: int, sampling_params: tinker.SamplingParams):
        self.service.prompts.append(prompt.to_ints())
        self.service.params.append(sampling_params)
        tok = self.service.tokenizer
        reply = tok.encode('{"verdict": 1, "reason": "fine"}', add_special_tokens=False) + [tok.eos_token_id]
        seq = SampledSequence(stop_reason="stop", sequence_id="s1", tokens_np=np.asarray(reply, dtype=np.int32),
                              logprobs_np=np.full(len(reply), -0.1, dtype=np.float32))
        return RecordingFuture([], "sample", SampleResponse(sequences=[seq]), self.service.faults.pop("sample", None))


class StandInService:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.created: list[str | None] = []
        self.prompts: list[list[int]] = []
        self.params: list[tinker.SamplingParams] = []
        self.faults: dict[str, Exception] = {}

    def create_sampling_client(self, model_path: str | None = None, base_model: str | None = None, **_: Any):
        self.created.append(model_path or f"base:{base_model}")
        return RecordingFuture([], "create", StandInSampler(self, model_path))


async def test_samples_the_newest_checkpoint_with_the_chat_template_and_decodes_the_reply():
    tok = load_tokenizer(TOKENIZER)
    service = StandInService(tok)
    paths = [None]

    async def latest() -> str | None:
        return paths[-1]

    model = TinkerSamplerModel(service, "HuggingFaceTB/SmolLM2-135M-Instruct", lambda: load_tokenizer(TOKENIZER), latest)
    out = await model.complete([ChatMessage("system", "Judge."), ChatMessage("user", "Was 2+2=4 right?")], max_tokens=64)
    assert out.text == '{"verdict": 1, "reason": "fine"}'
    assert (out.prompt_tokens, out.completion_tokens) == (len(service.prompts[0]), 14)
    assert tok.decode(service.prompts[0]).endswith("Was 2+2=4 right?<|im_end|>\n<|im_start|>assistant\n")
    assert service.params[0].max_tokens == 64 and service.params[0].stop == ["<|im_end|>"]
    paths.append("tinker://run-1/sampler_weights/step-000010")  # a new checkpoint: a new sampling client
    await model.complete([ChatMessage("user", "again")], max_tokens=8)
    await model.complete([ChatMessage("user", "and again")], max_tokens=8)
    assert service.created == ["base:HuggingFaceTB/SmolLM2-135M-Instruct", "tinker://run-1/sampler_weights/step-000010"]
    assert model.provider == "tinker:tinker://run-1/sampler_weights/step-000010"


async def test_connection_errors_become_retryable_llm_errors():
    tok = load_tokenizer(TOKENIZER)
    service = StandInService(tok)

    async def latest() -> None:
        return None

    model = TinkerSamplerModel(service, "m", tok, latest)
    service.faults["sample"] = tinker.APIConnectionError(request=httpx.Request("POST", "https://tinker.invalid/sample"))
    with pytest.raises(LLMUnavailable, match="unreachable"):
        await model.complete([ChatMessage("user", "hi")], max_tokens=8)
    assert (await model.complete([ChatMessage("user", "hi")], max_tokens=8)).text  # the client was rebuilt
    assert len(service.created) == 2
