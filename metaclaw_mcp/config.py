"""One configuration model for the whole process.

Sources, highest priority first: explicit values (CLI flags), environment variables
(`METACLAW_*`, plus `TINKER_API_KEY`), a TOML file (`--config`, else
`$METACLAW_HOME/config.toml`), then the defaults below. Field names follow MetaClaw's
where they exist.
"""
from __future__ import annotations

import difflib
import ipaddress
import logging
import os
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from .errors import ConfigError
from .schedule import parse_window

CATEGORIES = (
    "general", "coding", "research", "data_analysis", "writing", "agentic",
    "communication", "productivity", "security", "devops",
)


def default_home() -> Path:
    """The data folder: `$METACLAW_HOME`, else `~/.metaclaw` (user-expanded, not created)."""
    return Path(os.environ.get("METACLAW_HOME") or Path.home() / ".metaclaw").expanduser()


def default_cache_dir() -> Path:
    """Where derived files are cached (encoder tables, ONNX exports, dequantised models):
    `$XDG_CACHE_HOME/metaclaw-mcp` (default `~/.cache/metaclaw-mcp`; not created)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "metaclaw-mcp"


class MetaClawConfig(BaseSettings):
    """Every setting of metaclaw-mcp. See the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="METACLAW_", extra="forbid", validate_default=True)

    # where data lives
    home: Path = Field(default_factory=default_home, description="Data folder: database, exports, config.toml.",
                       json_schema_extra={"shown_default": "`~/.metaclaw` (`METACLAW_HOME`)"})
    db_path: Path | None = Field(None, description="SQLite file; default $METACLAW_HOME/metaclaw.db.")

    # transport
    transport: Literal["stdio", "sse", "http"] = Field(
        "stdio", description="How clients connect: `stdio` (the client starts the server), `http` (streamable "
                             "HTTP at /mcp) or `sse` (server-sent events at /sse).")
    host: str = Field("127.0.0.1", description="Bind address for http and sse; an address off loopback needs "
                      "a token (auth_token or tokens_file).")
    port: int = Field(8765, ge=1, le=65535, description="Port for http and sse.")
    auth_token: SecretStr | None = Field(None, description="Bearer token HTTP and SSE clients must send "
                                         "(one shared token: admin on every namespace).")
    tokens_file: Path | None = Field(None, description="TOML file of bearer tokens, each bound to namespaces and a "
                                     "role (agent or admin); see `metaclaw-mcp tokens add`. Replaces auth_token.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="`DEBUG`, `INFO`, `WARNING` or `ERROR`; logs go to stderr.")
    http_request_timeout_seconds: float = Field(10.0, gt=0, description="HTTP/SSE: seconds a request's headers "
                                                "and body may take to arrive, from its first byte (from connecting, "
                                                "for a connection's first request); slower connections are closed.")
    http_max_connections: int | None = Field(500, ge=1, description="HTTP/SSE: open connections past which a "
                                             "new request gets 503. None: no limit.")
    http_rate_limit: float | None = Field(100.0, gt=0, description="HTTP/SSE with tokens: requests per second "
                                          "one bearer token may make (requests without one: per client address), "
                                          "in bursts of up to http_rate_burst; past it, 429 with Retry-After. "
                                          "A loopback server without tokens (one user) is not limited. None: no limit.")
    http_rate_burst: int = Field(200, ge=1, description="HTTP/SSE: requests one caller may make at once before "
                                 "http_rate_limit applies.")

    # skills
    skill_top_k: int = Field(5, ge=1, le=50, description="Default `k` of fetch_skills: the most ranked skills "
                             "one fetch returns.")
    max_new_skills: int = Field(3, ge=0, le=50, description="Default `max_new` of evolve_skills: the most skills "
                                "one run adds.")
    load_starter_skills: bool = Field(True, description="Load the bundled starter skills into namespace "
                                      "`default` on first start.")
    max_skill_body_chars: int = Field(8000, ge=200, le=100_000, description="Cap on a skill's body, in characters.")
    injection_token_budget: int | None = Field(1200, ge=50, description="Cap on an injection's size in tokens "
                                               "(fetch_skills' token_budget overrides it per call).")
    injection_full_skills: int = Field(2, ge=0, le=50, description="Top skills shown with their whole body; "
                                       "the next relevant ones get a one-line entry (short bodies are always whole).")
    max_active_skills: int | None = Field(10_000, ge=1, description="Per namespace; past it the least useful "
                                          "active skills are retired (nothing is deleted). Retrieval takes a "
                                          "few ms at this size (bench/retrieval.py); raise it for bigger libraries.")

    # retrieval and credit
    retrieval_mode: Literal["auto", "hybrid", "lexical", "dense"] = Field(
        "auto", description="`auto`: `hybrid` when the [embeddings] extra is installed, else `lexical`; "
                            "`hybrid`: FTS5 BM25 fused with dense vectors; `lexical`: BM25 alone; `dense`: "
                            "vectors alone.")
    fusion: Literal["blend", "rrf"] = Field("blend", description="How lexical and dense relevance combine: "
                                            "`blend` (each min-max scaled, then weighted) or `rrf` (reciprocal "
                                            "rank fusion with the same weights).")
    fusion_lexical_weight: float = Field(0.4, ge=0.0, le=1.0, description="Lexical share of fused relevance.")
    retrieval_candidates: int = Field(50, ge=5, le=1000, description="Candidates each retriever hands to fusion.")
    consolidate_min_similarity: float | None = Field(None, ge=-1.0, le=1.0, description="Cosine (of description "
                                                     "and body) from which a proposal is a new version of the lesson it "
                                                     "resembles; default: the encoder's own (0.6 for MiniLM).")
    dedup_threshold: float = Field(0.8, gt=0.0, le=1.0, description="Word overlap (Jaccard) that makes two skills one.")
    query_messages: int = Field(4, ge=0, le=50, description="Recent messages fetch_skills adds to the query.")
    embedding_model_path: Path | None = Field(None, description="Sentence-transformers model folder; "
                                              "default: the all-MiniLM-L6-v2 bundled with the extra.")
    embedding_encoder: Literal["onnx", "static", "transformer"] = Field(
        default_factory=lambda: "onnx" if find_spec("onnxruntime") is not None else "static",
        json_schema_extra={"shown_default": "`onnx` with onnxruntime, else `static`"},
        description="`onnx` (the default with onnxruntime installed): the model exported once to ONNX with int8 "
        "weights, a query in a few ms; `static`: token vectors distilled from the model once (well under 1 ms, "
        "less accurate; the fallback without onnxruntime or the means to export); `transformer`: the full model "
        "per query (25-30 ms on a 2-core CPU).")
    embedding_cache_dir: Path | None = Field(None, description="Where the static token table is cached "
                                             "(default: $XDG_CACHE_HOME/metaclaw-mcp).")
    retrieval_seed: int | None = Field(None, description="Seed for exploration draws (tests, benchmarks).")
    experience_weight: float = Field(1.0, ge=0.0, le=10.0, description="Weight of the votes of similar past "
                                     "rated turns (their reward, to the skills they used) in relevance; 0 turns it off.")
    experience_neighbours: int = Field(5, ge=1, le=100, description="Past turns that vote for a query.")
    experience_min_similarity: float | None = Field(None, ge=-1.0, le=1.0, description="Cosine a past request "
                                                    "needs to vote; its weight is the excess over this. Default: the "
                                                    "encoder's own (static 0.6, onnx and transformer 0.4, each fitted "
                                                    "on the tau2 train split by leave-one-out).")
    experience_min_similarity_terms: float = Field(0.2, ge=-1.0, le=1.0, description="The same, for servers "
                                                   "without dense vectors, where requests are compared by "
                                                   "their words (about the share of words in common).")
    experience_turns: int = Field(20_000, ge=0, description="Most recent rated turns kept for experience.")
    credit_usefulness_weight: float = Field(2.0, ge=0.0, le=10.0, description="Weight of measured uplift in ranking.")
    credit_prior_sd: float = Field(0.25, gt=0.0, le=2.0, description="Prior sd of a skill's uplift (shrinkage).")
    credit_alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Chance that ratings unrelated to the skills "
                                "ever retire any skill of a library: the error rate of retirement, which holds "
                                "however often the library is reviewed (anytime-valid e-values, e-BH over the "
                                "library).")
    credit_min_raters: int = Field(2, ge=1, description="Where tokens share a namespace (ratings from more than "
                                   "one), the tokens whose ratings a skill's uses need before evidence promotes or "
                                   "retires it; an admin may still activate or retire it by hand.")
    credit_min_baseline: int = Field(5, ge=1, description="Rated turns without a skill before judging it.")
    credit_promote_min_uses: int = Field(8, ge=1, description="Rated uses before a candidate can be promoted.")
    credit_promote_min_uplift: float = Field(0.0, ge=-2.0, le=2.0, description="Promote when the uplift's lower bound is above this.")
    credit_retire_min_uses: int = Field(5, ge=1, description="Rated uses before a skill can be retired.")
    credit_retire_max_uplift: float = Field(0.0, ge=-2.0, le=2.0, description="Retire when the uplift's upper bound is below this.")
    credit_candidate_max_uses: int = Field(40, ge=1, description="A candidate not promoted after this many rated uses is retired.")
    explore_slots: int = Field(1, ge=0, le=10, description="Places per fetch that exploration may take.")
    explore_min_relevance: float = Field(0.3, ge=0.0, le=1.0, description="Explore only skills at least this relevant.")
    explore_max_uses: int = Field(20, ge=0, description="An active skill with fewer rated uses may still be explored.")
    credit_review_seconds: float = Field(10.0, gt=0.0, description="How often promotions and retirements are applied.")

    # input limits
    max_query_chars: int = Field(32_000, ge=100, description="Cap on a fetch_skills query, in characters.")
    max_turn_bytes: int = Field(2_000_000, ge=1_000, description="Cap on a turn's messages + response, in UTF-8 bytes.")
    max_namespaces: int | None = Field(1000, ge=1, description="Namespaces a server keeps (with skills or turns); "
                                       "a tool call naming a new one past this is refused. None: no limit.")
    retrieval_log_days: float = Field(30.0, gt=0.0, description="Days the log of what fetch_skills showed is kept.")
    retrieval_log_max_rows: int = Field(50_000, ge=100, description="Most rows of that log kept (the newest).")
    redact_secrets: bool = Field(True, description="Replace secrets (API keys, private keys, passwords, URL "
                                 "credentials, high-entropy strings) in reported turns and rating feedback by "
                                 "`[REDACTED:<kind>]` before they are stored; a turn that had one keeps no token ids.")

    # rewards and evolution
    failure_threshold: float = Field(0.0, ge=-1.0, le=1.0, description="A turn whose reward is below this is a failure.")
    digest_max_failures: int = Field(20, ge=1, le=500, description="Most failures in one evolve_skills digest.")

    # LLM for the judge and evolution
    llm_provider: Literal["none", "sampling", "openai", "tinker"] = Field(
        "sampling", description="Who writes skills (evolve_skills) and judges turns: `sampling`: the connected "
                                "client's model, when it can sample; `openai`: the OpenAI-compatible API at "
                                "llm_base_url (also runs the background judge); `tinker`: the newest sampler "
                                "checkpoint of training; `none`: nobody.")
    llm_base_url: str | None = Field(None, description="OpenAI-compatible API root, e.g. https://api.openai.com/v1.")
    llm_api_key: SecretStr | None = Field(None, description="Bearer key for llm_base_url (none for local servers).")
    llm_model: str | None = Field(None, min_length=1, description="Model name sent to llm_base_url.")
    llm_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="Deadline of one LLM attempt.")
    llm_max_retries: int = Field(4, ge=0, le=20, description="Retries after the first attempt on 429, 5xx, timeouts.")
    llm_max_concurrency: int = Field(4, ge=1, le=256, description="LLM requests in flight at once.")
    llm_token_cap: int | None = Field(None, ge=1, description="Total LLM tokens a namespace may use; unset = no cap.")
    judge_enabled: bool = Field(False, description="Rate unrated turns with the LLM judge (needs llm_provider=openai).")
    judge_delay_seconds: float = Field(300.0, ge=0, description="Judge a turn this long after it is reported, "
                                                                "so the user's next message can be read.")
    judge_votes: int = Field(3, ge=1, le=9, description="Judge votes per turn; the majority verdict is stored.")
    judge_poll_seconds: float = Field(30.0, gt=0, description="How often the judge looks for unrated turns.")
    evolve_every_failures: int | None = Field(None, ge=1, description="Evolve on its own after this many new failures "
                                              "in a namespace (needs a server-side LLM).")
    evolve_poll_seconds: float = Field(60.0, gt=0, description="How often automatic evolution counts new failures.")

    @field_validator("llm_base_url", mode="after")
    @classmethod
    def _llm_base_url_is_http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (e.g. https://api.openai.com/v1)")
        return v

    # training (MetaClaw's names)
    backend: Literal["auto", "tinker", "local", "export"] = Field(
        "auto", description="Where training runs: `auto` (`tinker` with an API key, else `export`), `tinker`, "
                            "`local` (torch and peft on this machine, extra [local]) or `export` (Tinker-ready "
                            "JSONL files under exports/).")
    model_name: str = Field("moonshotai/Kimi-K2.5", description="Base model for LoRA training.")
    lora_rank: int = Field(32, ge=1, le=512, description="LoRA rank.")
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="Adam learning rate.")
    batch_size: int = Field(32, ge=1, le=4096, description="Rated turns per training step.")
    max_steps: int = Field(1000, ge=0, description="Training stops after this many steps.")
    loss_fn: Literal["importance_sampling", "ppo", "cispo"] = Field(
        "importance_sampling", description="The RL loss: `importance_sampling`, `ppo` or `cispo`.")
    clip_low_threshold: float = Field(0.8, gt=0, le=1, description="Lower clip of the probability ratio "
                                      "(ppo, cispo).")
    clip_high_threshold: float = Field(1.2, ge=1, description="Upper clip of the probability ratio (ppo, cispo).")
    save_every: int = Field(10, ge=1, description="Steps between sampler checkpoints.")
    distill_threshold: float = Field(0.5, ge=-1.0, le=1.0, description="A text-only turn rated at least this "
                                     "is distilled (imitated); lower-rated ones feed skill evolution.")
    max_seq_len: int = Field(8192, ge=16, description="Longest training sequence in tokens (the prompt is cut "
                             "from the left, never the reply).")
    tokenizer_path: str | None = Field(None, description="Tokenizer folder (or hub id) of the base model, for "
                                       "distillation and the /v1 endpoint; default: local_model_path's, else "
                                       "model_name's from the local Hugging Face cache.")
    allow_downloads: bool = Field(False, description="Whether a tokenizer or model missing locally may be "
                                  "downloaded from the Hugging Face Hub; off, nothing waits on the network.")
    local_model_path: str | None = Field(None, description="Model folder for the local backend; default: packaged SmolLM2-135M.")
    min_batch_size: int = Field(2, ge=1, description="After batch_max_wait_seconds, train a batch this small.")
    batch_max_wait_seconds: float = Field(600.0, ge=0, description="After this long, a batch as small as "
                                          "min_batch_size is trained.")
    max_batch_attempts: int = Field(3, ge=1, description="A batch failing this often has its turns skipped.")
    batch_retry_base_seconds: float = Field(1.0, ge=0, description="Backoff before replaying a failed batch: "
                                            "this times 2^attempts, at most 60 s.")
    train_poll_seconds: float = Field(5.0, gt=0, description="How often the trainer looks for work when no "
                                      "rating wakes it.")
    teacher_model: str | None = Field(None, description="On-policy distillation: a Tinker base model, a tinker:// "
                                      "sampler path or a local model folder whose per-token logprobs on each RL "
                                      "turn's sampled tokens add teacher_kl_coef * (teacher - sampler) to its advantages.")
    teacher_kl_coef: float = Field(1.0, gt=0.0, le=100.0, description="Weight of the teacher's reverse-KL term.")
    train_window: str | None = Field(None, description="Train only in this daily window of local time, e.g. "
                                     "'01:00-06:00' (past midnight: '22:00-06:00'); rated turns queue meanwhile.")
    train_when_idle_seconds: float | None = Field(None, gt=0, description="Train only after this many seconds "
                                                  "without a tool call or /v1 request.")

    @field_validator("train_window", mode="after")
    @classmethod
    def _window_parses(cls, v: str | None) -> str | None:
        if v is not None:
            parse_window(v)
        return v
    # the trained policy, served at /v1 on the HTTP transports
    policy: Literal["auto", "off", "local", "tinker"] = Field("auto", description="Which model /v1 serves: "
                                                           "`auto`: the training backend's (`local` or `tinker`; "
                                                           "none for export); `off`: no /v1 endpoint.")
    policy_inject_skills: bool = Field(True, description="Add the skills fetched for each /v1 request to its "
                                       "system prompt.")
    policy_max_tokens: int = Field(2048, ge=1, description="Most tokens one /v1 completion may ask for "
                                   "(the default when a request names none is the smaller of this and 512).")
    policy_max_n: int = Field(8, ge=1, le=64, description="Most completions one /v1 request may ask for.")
    policy_warm_up: bool = Field(True, description="Load the policy's model when an HTTP or SSE server starts, "
                                 "not on the first /v1 request.")
    tinker_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("tinker_api_key", "METACLAW_TINKER_API_KEY", "TINKER_API_KEY"),
        description="Tinker API key (also read from TINKER_API_KEY); masked in `config show`.")
    tinker_base_url: str | None = Field(
        None, validation_alias=AliasChoices("tinker_base_url", "METACLAW_TINKER_BASE_URL", "TINKER_BASE_URL"),
        description="A self-hosted Tinker-API server (also read from TINKER_BASE_URL); default: Tinker's own.")

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, v: Path) -> Path:
        return v.expanduser()

    @property
    def database(self) -> Path:
        """The SQLite file: `db_path`, else `home/metaclaw.db`."""
        return (self.db_path or self.home / "metaclaw.db").expanduser()

    @property
    def exports_dir(self) -> Path:
        """Where training data is exported: `home/exports` (not created here)."""
        return self.home / "exports"

    @property
    def is_loopback(self) -> bool:
        """Whether `host` is `localhost` or a loopback IP address (a name other than localhost is not)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def effective_backend(self) -> str:
        """The training backend in use: `backend`, or for `auto` "tinker" with an API key, else "export"."""
        if self.backend != "auto":
            return self.backend
        return "tinker" if self.tinker_api_key else "export"

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings hook: explicit values, then the environment, then the TOML file chosen by
        `load_config` (dotenv and secret files are not read)."""
        toml = _TOML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    def shown(self) -> dict[str, Any]:
        """The effective config as plain data, secrets masked."""
        out = self.model_dump(mode="json")
        for key, value in out.items():
            if isinstance(getattr(self, key), SecretStr) and value:
                out[key] = "**********"
        out["database"] = str(self.database)
        out["effective_backend"] = self.effective_backend
        return out


# The TOML path is chosen per load; pydantic-settings reads sources from a classmethod.
_TOML_FILE: dict[str, Path | None] = {"path": None}


def load_config(config_file: str | Path | None = None, **overrides: Any) -> MetaClawConfig:
    """Build the effective config; raise ConfigError naming each bad field and what it allows."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    home = Path(overrides.get("home") or default_home()).expanduser()
    path = Path(config_file).expanduser() if config_file else home / "config.toml"
    if config_file and not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    _TOML_FILE["path"] = path if path.is_file() else None
    for line in unknown_environment(os.environ):
        logging.getLogger("metaclaw_mcp").warning("%s", line)
    try:
        return MetaClawConfig(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=path if _TOML_FILE["path"] else None)) from None
    except (ValueError, OSError) as exc:  # a TOML syntax error arrives here
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    finally:
        _TOML_FILE["path"] = None


# The README's settings table lies between these lines, written by `settings_table` (`metaclaw-mcp config table`).
TABLE_START = "<!-- settings table: written by `metaclaw-mcp config table --readme README.md` from MetaClawConfig -->"
TABLE_END = "<!-- end of settings table -->"


def shown_default(name: str) -> str:
    """A setting's default as the README shows it: TOML in backticks (`8765`, `true`, `"auto"` as `auto`),
    `none` for no value, or the words a field gives as `json_schema_extra["shown_default"]` where the
    default depends on the machine."""
    field = MetaClawConfig.model_fields[name]
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "shown_default" in extra:
        return str(extra["shown_default"])
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def settings_table() -> str:
    """Every setting of MetaClawConfig as a markdown table (setting, default, meaning), in the model's order."""
    rows = ["| setting | default | meaning |", "| --- | --- | --- |"]
    for name, field in MetaClawConfig.model_fields.items():
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {shown_default(name)} | {meaning} |")
    return "\n".join(rows) + "\n"


def with_settings_table(readme: str) -> str:
    """`readme` with the text between TABLE_START and TABLE_END replaced by `settings_table()`;
    ValueError when the markers are missing."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"no settings table markers ({TABLE_START!r} ... {TABLE_END!r})")
    return readme[:start + len(TABLE_START)] + "\n" + settings_table() + readme[end:]


def closest_setting(name: str) -> str | None:
    """The setting whose name is closest to `name` (difflib's ratio, at least 0.6), or None."""
    close = difflib.get_close_matches(name.lower(), list(MetaClawConfig.model_fields), n=1)
    return close[0] if close else None


def unknown_setting(name: str, source: Path | None = None) -> str:
    """One line for a key no setting has: `unknown setting 'skill_top_kk' in config.toml: did you mean
    skill_top_k?` (`source`: the TOML file it came from, None for explicit values)."""
    close = closest_setting(name)
    return (f"unknown setting {name!r}" + (f" in {source.name}" if source is not None else "")
            + (f": did you mean {close}?" if close else "; `metaclaw-mcp config show` lists the settings"))


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """A line for each `METACLAW_*` variable that names no setting but is close to one (a typo). Such a
    variable is ignored, not refused: other tools (test harnesses, scripts) use the prefix too."""
    fields = set(MetaClawConfig.model_fields)
    lines = []
    for key in sorted(environ):
        if not key.startswith("METACLAW_") or key[len("METACLAW_"):].lower() in fields:
            continue
        close = difflib.get_close_matches(key[len("METACLAW_"):].lower(), list(fields), n=1, cutoff=0.8)
        if close:
            lines.append(f"{key} is not a setting and is ignored: did you mean METACLAW_{close[0].upper()}?")
    return lines


def format_validation_error(exc: ValidationError, source: str | Path | None = None) -> str:
    """One line per bad field, with what it allows, the value given (never for tokens and keys), and where
    to set it, under a heading; `source` names the TOML file read, if any. A key no setting has is
    `unknown_setting`'s line, with the closest name; a message of such lines alone has no heading."""
    source = Path(source) if source is not None else None
    unknown, lines = [], []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            unknown.append(unknown_setting(field, source))
            continue
        got = err.get("input")
        secret = any(w in field for w in ("token", "key"))
        got_text = "" if isinstance(got, dict) or secret else f" (got {got!r})"
        lines.append(f"  {field}: {err['msg']}{got_text}; set METACLAW_{field.upper()} or '{field}' in config.toml")
    if not lines:
        return "\n".join(unknown)
    heading = "invalid configuration" + (f" (file {source})" if source else "") + ":"
    return "\n".join([heading, *(f"  {u}" for u in unknown), *lines])
