"""The trained policy served back to agents: samplers over the newest checkpoint (`local`, `tinker`),
and the OpenAI- and Anthropic-compatible HTTP endpoint (`api`) that records every completion as an
RL-ready turn."""
from __future__ import annotations

from .base import Policy, Sampled, SampledSequence, SamplingRequest, make_policy

__all__ = ["Policy", "Sampled", "SampledSequence", "SamplingRequest", "make_policy"]
