"""Secret detection and redaction: what must never be stored raw, shown to another client, put in an
LLM prompt or trained on. Pure functions, no I/O.

Detection has three parts, each finding spans of the text:

1. the detectors of `detect-secrets` (Yelp's scanner, as used in pre-commit hooks): cloud and
   service keys (AWS, Stripe, GitHub, GitLab, Slack, OpenAI, npm, PyPI, Twilio, JWTs, ...), basic
   auth in URLs, private keys and `password = "..."` style assignments;
2. patterns of this module for what those detectors leave out or only flag in part: whole PEM
   private-key blocks (header, body and footer), fine-grained GitHub tokens (`github_pat_`), live
   and test Stripe keys, Tinker and OpenAI-style keys, bearer tokens, `user:password@` in any URL;
3. an entropy check: a run of 32 or more base64 characters that mixes upper case, lower case and
   digits and whose Shannon entropy is above 4.5 bits a character (the `detect-secrets` default
   for base64 strings) is taken for a key. Hex strings are not checked by entropy: commit hashes
   and digests are everyday text.

`redact` replaces every span by `[REDACTED:<kind>]`, so the text keeps its shape and a reader sees
what was removed. What is not promised: a secret in a shape none of these know (a short password in
prose, a key split across lines) passes.
"""
from __future__ import annotations

import functools
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

REDACTED = "[REDACTED:{kind}]"
ENTROPY_MIN_CHARS = 32        # shorter runs are words, paths and ids more often than keys
BASE64_ENTROPY_LIMIT = 4.5    # bits per character: detect-secrets' Base64HighEntropyString default
LINE_SCAN_MAX_CHARS = 1_024   # characters detect-secrets' detectors read at a time

PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    # header, then the key's base64 lines (raw or JSON-escaped newlines), then the footer if there is one
    ("private key", re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:\\[rn]|[\sA-Za-z0-9+/=:,\-])*?"
                               r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|(?=[^\sA-Za-z0-9+/=:,\-\\])|\Z)")),
    ("GitHub token", re.compile(r"\b(?:github_pat_[A-Za-z0-9_]{22,}|gh[pousr]_[A-Za-z0-9]{30,})")),
    ("Stripe key", re.compile(r"\b[rsp]k_(?:live|test)_[A-Za-z0-9]{16,}")),
    ("API key", re.compile(r"\b(?:sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{16,}|tml-[A-Za-z0-9_\-]{16,}|"
                           r"xox[abpr]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35})")),
    ("AWS access key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("bearer token", re.compile(r"\bBearer\s+[A-Za-z0-9\-_.=~+/]{20,}")),
    ("URL credentials", re.compile(r"(?<=://)[^\s/:@]+:[^\s/@]+(?=@)")),
]

# What the slowest detect-secrets detectors cannot match without (their patterns require one of these
# words or prefixes): a chunk that has none is not given to them (a fifth of the scan's time left).
_CREDENTIAL_WORD = re.compile(r"(?i)key|pw|pass|token|secret|contrase|cred|auth")
NEEDS: dict[str, re.Pattern[str]] = {
    "Secret Keyword": _CREDENTIAL_WORD, "Cloudant Credentials": _CREDENTIAL_WORD,
    "IBM Cloud IAM Key": _CREDENTIAL_WORD, "IBM COS HMAC Credentials": _CREDENTIAL_WORD,
    "SoftLayer Credentials": _CREDENTIAL_WORD, "Artifactory Credentials": re.compile(r"AKC|AP[0-9A-F]"),
}

# What any of the other detectors needs somewhere in a chunk: a run of 16 or more key characters (every
# key format they know is at least that long), a URL's "://" (basic auth) or a PEM header.
_ANY_SECRET_SHAPE = re.compile(r"[A-Za-z0-9_\-+/=.]{16,}|://|BEGIN")

_B64_RUN = re.compile(r"[A-Za-z0-9+/_\-]{%d,}={0,2}" % ENTROPY_MIN_CHARS)


@dataclass(frozen=True)
class Finding:
    """One secret-looking span: `text[start:end]`, and what kind of secret it looks like."""
    kind: str
    start: int
    end: int


def shannon_entropy(text: str) -> float:
    """Bits per character of `text`'s character distribution (0.0 for an empty string)."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _looks_random(run: str) -> bool:
    core = run.rstrip("=")
    return (any(c.islower() for c in core) and any(c.isupper() for c in core) and any(c.isdigit() for c in core)
            and shannon_entropy(core) > BASE64_ENTROPY_LIMIT)


@functools.lru_cache(maxsize=1)
def _detectors() -> tuple[Any, ...]:
    """detect-secrets' detectors, without its entropy ones (done here, on unquoted text too) and without
    the IPv4 one (addresses are not secrets). Empty when the package is missing."""
    try:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    except ImportError:   # pragma: no cover - a declared dependency; the patterns still apply
        return ()
    skip = ("High Entropy", "Public IP")
    return tuple((cls(), NEEDS.get(kind)) for kind, cls in sorted(get_mapping_from_secret_type_to_class().items())
                 if not any(s in kind for s in skip))


def _windows(text: str) -> list[tuple[int, str]]:
    """(offset, chunk) pieces of `text` of about `LINE_SCAN_MAX_CHARS`, cut at line ends where it can."""
    out: list[tuple[int, str]] = []
    at = 0
    while at < len(text):
        end = min(at + LINE_SCAN_MAX_CHARS, len(text))
        if end < len(text):
            nl = text.rfind("\n", at, end)
            end = nl + 1 if nl > at else end
        out.append((at, text[at:end]))
        at = end
    return out


def _library_findings(text: str) -> list[Finding]:
    """detect-secrets' findings, located in `text`. Its detectors read a chunk of lines at a time
    (one call per detector a chunk: some thousand characters cost about a millisecond)."""
    found: list[Finding] = []
    detectors = _detectors()
    for offset, chunk in _windows(text):
        present: dict[re.Pattern[str], bool] = {}   # each prefilter looked for once a chunk
        for detector, needs in detectors:
            needs = needs or _ANY_SECRET_SHAPE
            if needs not in present:
                present[needs] = needs.search(chunk) is not None
            if not present[needs]:
                continue
            try:
                secrets = detector.analyze_line(filename="text", line=chunk, line_number=1)
            except Exception:  # noqa: BLE001 - one detector's bug must not stop the others
                continue
            for secret in secrets:
                value = secret.secret_value
                if not value:
                    continue
                at = chunk.find(value)
                while at >= 0:
                    found.append(Finding(secret.type, offset + at, offset + at + len(value)))
                    at = chunk.find(value, at + len(value))
    return found


def find_secrets(text: str) -> list[Finding]:
    """Every secret-looking span of `text`, sorted by start, overlapping spans merged (the first
    kind kept). Empty for clean text."""
    if not text:
        return []
    found: list[Finding] = []
    for kind, pattern in PATTERNS:
        for m in pattern.finditer(text):
            found.append(Finding(kind, m.start(), m.end()))
    found.extend(_library_findings(text))
    for m in _B64_RUN.finditer(text):
        if _looks_random(m.group(0)):
            found.append(Finding("high-entropy string", m.start(), m.end()))
    found.sort(key=lambda f: (f.start, -f.end))
    merged: list[Finding] = []
    for f in found:
        if merged and f.start < merged[-1].end:
            last = merged[-1]
            if f.end > last.end:
                merged[-1] = Finding(last.kind, last.start, f.end)
            continue
        merged.append(f)
    return merged


def find_secret(text: str) -> str | None:
    """The kind of the first secret in `text` ("AWS access key", "private key", ...), or None."""
    found = find_secrets(text)
    return found[0].kind if found else None


def redact(text: str) -> str:
    """`text` with every secret-looking span replaced by `[REDACTED:<kind>]`; clean text unchanged."""
    found = find_secrets(text)
    if not found:
        return text
    parts: list[str] = []
    at = 0
    for f in found:
        parts.append(text[at:f.start])
        parts.append(REDACTED.format(kind=f.kind))
        at = f.end
    parts.append(text[at:])
    return "".join(parts)


def redact_json(value: Any) -> Any:
    """A JSON-shaped value (dicts, lists, strings, numbers) with every string redacted (`redact`);
    keys are kept as they are."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_json(v) for k, v in value.items()}
    return value


__all__ = ["BASE64_ENTROPY_LIMIT", "ENTROPY_MIN_CHARS", "Finding", "PATTERNS", "REDACTED", "find_secret",
           "find_secrets", "redact", "redact_json", "shannon_entropy"]
