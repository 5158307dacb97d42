"""Screening of skill text (proposals and imports): text that must never reach an agent's system prompt.

Pure functions. A proposal is rejected when its text tries to override earlier
instructions, exfiltrate data, run fetched code, reveal secrets, or carries a secret.
"""
from __future__ import annotations

import re

RULES: list[tuple[str, re.Pattern[str]]] = [
    ("tries to override earlier instructions", re.compile(
        r"\b(ignore|disregard|forget|override)\b.{0,40}\b(previous|prior|earlier|above|all|system|developer)\b"
        r".{0,20}\b(instructions?|prompts?|rules|messages?|guidelines)", re.I | re.S)),
    ("asks to reveal a system prompt or secrets", re.compile(
        r"\b(reveal|print|show|output|leak|send|share|upload|post)\b.{0,40}\b(system prompt|api[ _-]?keys?|"
        r"passwords?|credentials?|secrets?|tokens?|private keys?|ssh keys?)\b", re.I)),  # one line: not across fields
    ("reads credential files", re.compile(
        r"(~|\$HOME|/home/\w+|/root)/\.(ssh|aws|gnupg|netrc|docker/config)|id_(rsa|ed25519|ecdsa)\b|\.env\b.{0,30}\b(send|upload|post)",
        re.I)),
    ("pipes downloaded code into a shell", re.compile(
        r"\b(curl|wget|iwr|invoke-webrequest)\b[^\n|]{0,200}\|\s*(sudo\s+)?(ba|z|da)?sh\b|\bbase64\s+-d\b[^\n]{0,80}\|\s*(ba)?sh",
        re.I)),
    ("sends data to an external address", re.compile(
        r"\b(send|post|upload|exfiltrate|forward|transmit)\b.{0,60}\bhttps?://", re.I | re.S)),
]

SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("an API key", re.compile(r"\b(sk-[A-Za-z0-9_\-]{16,}|tml-[A-Za-z0-9_\-]{16,}|AKIA[0-9A-Z]{16}|"
                               r"gh[pousr]_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9\-]{10,})")),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a bearer token", re.compile(r"\bBearer\s+[A-Za-z0-9\-_.=]{20,}")),
]


NEGATION = re.compile(r"\b(never|don't|do not|must not|should not|avoid|instead of|rather than)\b[^.\n]*$", re.I)


def _advised_against(text: str, start: int) -> bool:
    """True when the match is the object of a warning ("never print secrets"), not an instruction."""
    return bool(NEGATION.search(text[max(0, start - 40):start]))


def screen(*texts: str) -> str | None:
    """The first reason to reject these texts, or None when they are clean."""
    joined = "\n".join(texts)
    for i, (reason, pattern) in enumerate(RULES):
        for m in pattern.finditer(joined):
            # Overriding instructions is never advice; the other rules may appear in warnings.
            if i == 0 or not _advised_against(joined, m.start()):
                return f"{reason}: {m.group(0)[:80]!r}"
    for what, pattern in SECRET_PATTERNS:
        if pattern.search(joined):
            return f"contains what looks like {what}; skills must never carry secrets"
    return None


def find_secret(text: str) -> str | None:
    """What kind of secret `text` seems to carry ("an API key", ...), or None."""
    for what, pattern in SECRET_PATTERNS:
        if pattern.search(text):
            return what
    return None


def redact_secrets(text: str) -> str:
    """`text` with every secret-looking span replaced by [REDACTED]."""
    for _, pattern in SECRET_PATTERNS:
        text = pattern.sub("[REDACTED]", text)
    return text
