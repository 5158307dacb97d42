"""Pydantic models shared by the tools, the store and the CLI.

Input models are strict about what they accept (clients see them as JSON schemas);
output models are what tools return as structured content.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from .config import CATEGORIES
from .messages import content_text

SLUG_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
Namespace = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$",
                                 description="Separate libraries and logs per project or user.")]
Score = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False, description="Reward in [-1, 1].")]
RatingSource = Literal["user", "env", "agent", "judge"]
SkillStatus = Literal["candidate", "active", "retired"]
CATEGORY_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def normalise_category(value: object) -> str:
    """A category as stored: a free-form label, trimmed, lowercase, at most 64 chars; empty is "general".
    ValueError for a non-string or a label with control characters or line breaks."""
    if not isinstance(value, str):
        raise ValueError(f"category must be a string, not {type(value).__name__}")
    label = value.strip().lower()
    if CATEGORY_CONTROL.search(label):
        raise ValueError(f"category {value!r} has control characters or line breaks")
    return label[:64].rstrip() or "general"


Category = Annotated[str, AfterValidator(normalise_category), Field(
    examples=list(CATEGORIES), description="A free-form label, lowercased, at most 64 chars; suggested: "
                                           + ", ".join(CATEGORIES) + ".")]


# ---- messages (OpenAI chat format) ----

class ContentPart(BaseModel):
    """One part of a multi-part message: text, an image reference, or another typed part."""
    model_config = ConfigDict(extra="allow")
    type: str = Field(min_length=1, max_length=64)
    text: str | None = None


class ToolCallFunction(BaseModel):
    """The function a tool call names, and its arguments (JSON text or an object)."""
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=256)
    arguments: str | dict[str, Any] = ""


class ToolCall(BaseModel):
    """One tool call of an assistant message (OpenAI format)."""
    model_config = ConfigDict(extra="allow")
    id: str | None = Field(None, max_length=256)
    type: str = "function"
    function: ToolCallFunction


class Message(BaseModel):
    """An OpenAI-style chat message."""
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _has_substance(self) -> Message:
        if self.content is None and not self.tool_calls:
            raise ValueError(f"a {self.role} message needs content or tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def text(self) -> str:
        """The message's text (`messages.content_text`)."""
        return content_text(self.content)


# Token ids are below 2**31: every tokenizer's vocabulary fits in a signed 32-bit integer (the largest
# today have about 260k entries), so a bigger id is a client's mistake, and refusing it here keeps it out
# of the store and of batch planning, where tokenizers and tensors take int32/int64 ids.
MAX_TOKEN_ID = 2**31 - 1
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]


class TokenData(BaseModel):
    """The sampler's tokens for this turn: what makes it fit for RL.

    Ids are integers from 0 to 2**31 - 1; logprobs, when given, one finite value <= 0 per completion
    token. Anything else is refused with the list and the index that were wrong."""
    model_config = ConfigDict(extra="forbid")
    prompt_ids: list[TokenId] = Field(min_length=1, description="Prompt token ids, as sampled (0 to 2**31 - 1).")
    completion_ids: list[TokenId] = Field(min_length=1, description="Completion token ids (0 to 2**31 - 1).")
    logprobs: list[float] | None = Field(None, description="Sampler log-probability of each completion token.")

    @model_validator(mode="after")
    def _lengths_agree(self) -> TokenData:
        if self.logprobs is not None:
            if len(self.logprobs) != len(self.completion_ids):
                raise ValueError(f"tokens.logprobs has {len(self.logprobs)} values but tokens.completion_ids has "
                                 f"{len(self.completion_ids)}: give one logprob per completion token")
            bad = next((i for i, v in enumerate(self.logprobs) if not math.isfinite(v) or v > 0), None)
            if bad is not None:
                raise ValueError(f"tokens.logprobs[{bad}] = {self.logprobs[bad]!r}: a log-probability is finite and <= 0")
        return self


# ---- skills ----

class SkillProposal(BaseModel):
    """A new skill, as an agent or an LLM proposes it."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=SLUG_RE.pattern,
                      description="Slug: lowercase letters, digits and single hyphens, at most 64 chars.")
    description: str = Field(min_length=10, max_length=1024, description="When to use it, starting 'Use when ...'.")
    body: str = Field(min_length=20, description="Concrete steps and one anti-pattern, in markdown.")
    category: Category = "general"
    addresses: list[str] = Field(default_factory=list, max_length=200,
                                 description="Turn ids of the failures this skill addresses.")
    scope: Literal["topic", "always"] | None = Field(
        None, description="always: a standing preference that applies whatever the request (a format, a "
                          "convention), injected on every fetch once a rated failure taught it; topic (the "
                          "default): retrieved where the request fits it.")

    @field_validator("description", "body")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()


class SkillOut(BaseModel):
    """One skill version as fetch_skills returns it, with why it was chosen and its evidence so far."""
    id: int
    slug: str
    version: int
    name: str
    description: str
    body: str
    category: str
    status: SkillStatus
    score: float = Field(description="What it was ranked by: relevance scaled by weighted usefulness, relevance x (1 + w x usefulness) (higher is better).")
    why: Literal["relevance", "usefulness", "exploration", "standing"] = Field(
        "relevance", description="Chosen for its relevance, for its measured usefulness, to explore "
                                 "(a candidate or a skill still short of evidence), or as a standing lesson "
                                 "(one that applies whatever the task).")
    disclosure: Literal["full", "brief", "standing"] = Field(
        "full", description="How the injection shows it: its whole body, a one-line entry (read the skill:// "
                            "resource for the body), or its rule on one line among the standing preferences.")
    relevance: float = Field(0.0, description="Fused lexical and dense relevance in [0, 1]; the best match is 1.")
    usefulness: float = Field(0.0, description="Measured reward uplift of this version (0 without evidence).")
    uses: int = Field(0, description="Turns this version was injected into so far.")


class FetchResult(BaseModel):
    """What fetch_skills returns: the skills chosen, best first, and their injection text."""
    skills: list[SkillOut]
    injection: str = Field(description="Markdown to append to the system prompt.")
    retrieval_id: str = Field(description="Pass to report_turn to link this retrieval to the turn.")


class ReportResult(BaseModel):
    """What report_turn returns: the turn's id and what was stored."""
    turn_id: str
    duplicate: bool = Field(description="True when idempotency_key matched an existing turn; nothing new was written.")
    skills_linked: int = 0
    redacted: list[str] = Field(default_factory=list, description="Fields whose secrets were replaced by "
                                "[REDACTED:<kind>] before storage; 'tokens' when the token ids were not stored "
                                "(they would spell the secret out).")


class RateResult(BaseModel):
    """What rate_turn returns: the turn's reward after fusing all its ratings, and its source."""
    turn_id: str
    reward: float = Field(description="The turn's fused reward after this rating.")
    reward_source: RatingSource
    queued_for_training: bool = Field(description="True when the turn will be trained on: queued for RL (it "
                                      "carries sampler tokens) or for distillation (text only, rated at least "
                                      "distill_threshold), with a training backend configured.")
    training: str = Field("", description="What happens to the turn, in a sentence: queued for RL, queued for "
                          "distillation, or not trained and why.")


class AcceptedSkill(BaseModel):
    """A proposal that evolve_skills accepted: the skill version it became."""
    id: int
    slug: str
    version: int
    status: SkillStatus
    proposed_name: str | None = Field(None, description="The name the proposal gave (differs when it revised a skill).")
    revised: bool = Field(False, description="True when the proposal became a new version of an existing skill.")


class RejectedProposal(BaseModel):
    """A proposal that evolve_skills refused, and why."""
    name: str
    reason: str


class FailureItem(BaseModel):
    """One rated failure of the digest: its reward in [-1, 1], the last user message and the response
    (clipped, secrets redacted), and the feedback its ratings gave."""
    turn_id: str
    session_id: str
    reward: float
    request: str
    response: str
    feedback: list[str]


class Digest(BaseModel):
    """Recent failures to learn from, how to write skills for them, and the JSON schema of a proposal."""
    failures: list[FailureItem]
    instructions: str
    proposal_schema: dict[str, Any]


class EvolveResult(BaseModel):
    """What evolve_skills returns: the digest (without proposals) or the proposals accepted and rejected."""
    failures_analyzed: int
    accepted: list[AcceptedSkill]
    rejected: list[RejectedProposal]
    digest: Digest | None = None
    evolution_id: int | None = None
    dry_run: bool = False
