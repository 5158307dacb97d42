"""Screening of skill text (proposals and imports): text that must never reach an agent's system prompt.

Pure functions. `screen` returns the first reason to refuse a skill, or None. The text is looked
at the way a model would read it:

- **normalised** first (`normalise`): Unicode NFKC (full-width and other look-alike letters become
  plain ones), zero-width characters removed, so `ig\u200bnore` reads as `ignore`;
- **hidden text refused**: Unicode tag characters (an invisible copy of ASCII), bidirectional
  controls (text shown in another order than it is read) and HTML comments are never needed by a
  skill, and are what hidden instructions travel in;
- **encoded text decoded**: a base64 run that decodes to text is screened too;
- **outside links and images refused**: a markdown or HTML image or link to an outside address
  makes a client fetch it (an image URL can carry data out in its query string);
- **patterns** (`RULES`): overriding earlier instructions (in English paraphrases and in a dozen
  other languages), a forged message boundary or role (`</skill>` then `SYSTEM:`), revealing
  secrets or the system prompt, reading credential files, running downloaded code
  (`curl ... | sh`, `bash <(curl ...)`, `iex (iwr ...)`), sending data to an outside address;
- **secrets** (`privacy.find_secret`): a skill never carries one.

What it does not promise: it is a filter of known shapes, not a boundary. A paraphrase it does not
know passes; so does an instruction that is harmful only in context. Skills reach prompts as
text the agent may follow, so what an untrusted source writes into a shared library is limited by
who may write there, not by this module.
"""
from __future__ import annotations

import base64
import binascii
import re
import unicodedata

from .privacy import find_secret

ZERO_WIDTH = re.compile("[\u00ad\u180e\u200b\u200c\u200d\u2060-\u2064\ufeff]")
TAG_CHARACTERS = re.compile("[\U000e0000-\U000e007f]")
BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{24,}={0,2}(?![A-Za-z0-9+/=])")

_OVERRIDE_VERB = r"(ignore|disregard|forget|override|overrule|skip|bypass|drop|discard|abandon|neglect|pay no attention to)"
_OVERRIDE_WHAT = r"(instructions?|prompts?|rules|messages?|guidelines|guidance|directives?|guardrails|policies|constraints)"
# "ignore previous instructions" in other languages (verb ... earlier ... instructions, loosely)
_FOREIGN_OVERRIDE = (
    r"ignor(e|ez|ier\w*|a|ar|are|ate|eer)\b.{0,40}\b(instructions?|anweisungen|instrucciones|istruzioni|instru[cç][õo]es|"
    r"instructies|regeln|r[eè]gles|reglas|regole|consignes)"
    r"|vergiss.{0,40}(anweisungen|regeln)|olvida.{0,40}(instrucciones|reglas)|oublie.{0,40}(instructions|r[eè]gles)"
    r"|dimentica.{0,40}(istruzioni|regole)|esque[cç]a.{0,40}(instru[cç][õo]es|regras)"
    r"|игнорир\w*.{0,40}инструкци|забудь.{0,40}инструкци"
    r"|忽略.{0,12}(指令|指示|说明|規則|规则|提示)|无视.{0,12}(指令|规则)|前の指示を無視|指示を無視"
    r"|이전\s*지시.{0,10}무시|무시.{0,10}지시"
)

RULES: list[tuple[str, re.Pattern[str]]] = [
    ("tries to override earlier instructions", re.compile(
        rf"\b{_OVERRIDE_VERB}\b.{{0,40}}\b(previous|prior|earlier|above|preceding|all|any|every|system|developer|original|"
        rf"your)\b.{{0,30}}\b{_OVERRIDE_WHAT}"
        rf"|\b{_OVERRIDE_VERB}\s+(the|these|those|my|our)?\s*{_OVERRIDE_WHAT}\s+(above|before|so far|you (were|have been) given)"
        r"|\b(from now on|henceforth|starting now),?\s+(you\s+(are|will|must|shall|have)|act|behave|respond|answer)\b"
        r"|\byou are now\b|\bnew (system )?instructions?\s*:|\bact as (dan|an? (unrestricted|unfiltered|jailbroken))\b"
        r"|\b(previous|above|earlier|prior) (instructions|rules|messages) (are|were|is) (void|cancelled|canceled|obsolete|"
        r"fake|wrong|no longer valid)|\bjailbreak|\bdeveloper mode\b|\bdo anything now\b"
        rf"|{_FOREIGN_OVERRIDE}", re.I | re.S)),
    ("imitates a message boundary or another role", re.compile(
        r"</?\s*(system|skill|skills|instructions?|user|assistant|developer|tool|context|metaclaw[\w-]*)\s*>"
        r"|<\|\s*(im_start|im_end|system|endoftext|start_header_id|end_header_id|eot_id)\s*\|>|\[/?(INST|SYS)\]|<<\s*/?SYS\s*>>"
        r"|^\s*(#+\s*)?\[?(system|developer|assistant)\]?\s*(message|prompt)?\s*:", re.I | re.M)),
    ("asks to reveal a system prompt or secrets", re.compile(
        r"\b(reveal|print|show|output|leak|send|share|upload|post|dump|repeat|echo|disclose)\b.{0,40}\b(system prompt|"
        r"api[ _-]?keys?|passwords?|credentials?|secrets?|tokens?|private keys?|ssh keys?|env(ironment)? variables)\b",
        re.I)),  # one line: not across fields
    ("reads credential files", re.compile(
        r"(~|\$HOME|/home/\w+|/root|%USERPROFILE%)[/\\]\.(ssh|aws|gnupg|netrc|docker[/\\]config|kube|git-credentials)"
        r"|id_(rsa|ed25519|ecdsa)\b|\.env\b.{0,30}\b(send|upload|post)|/etc/shadow\b", re.I)),
    ("runs downloaded code", re.compile(
        r"\b(curl|wget|iwr|irm|invoke-webrequest|invoke-restmethod|fetch)\b[^\n|]{0,200}\|\s*(sudo\s+)?"
        r"((ba|z|da|k|c)?sh|python[0-9.]*|perl|ruby|node|iex|invoke-expression|powershell|pwsh)\b"
        r"|\b(ba|z)?sh\s+<\(\s*(curl|wget)\b|\$\(\s*(curl|wget)\b|`\s*(curl|wget)\b"
        r"|\b(iex|invoke-expression)\b\s*[(\s]\s*(\(?\s*)?(iwr|irm|invoke-webrequest|invoke-restmethod|new-object)\b"
        r"|downloadstring\s*\(|\bpowershell(\.exe)?\b[^\n]{0,40}\s-e(nc(odedcommand)?)?\s"
        r"|\bbase64\s+(-d|--decode)\b[^\n]{0,80}\|\s*(ba)?sh|\bnc\b[^\n]{0,40}\s-e\s|/dev/tcp/", re.I)),
    ("sends data to an external address", re.compile(
        r"\b(send|post|upload|exfiltrate|forward|transmit|submit|beacon)\b.{0,60}\bhttps?://"
        r"|\bwget\b[^\n]{0,80}--post-(file|data)|\bcurl\b[^\n]{0,120}(\s-(d|F|T)\s*@|--data(-binary|-raw)?\s+@|--upload-file)",
        re.I | re.S)),
    ("links to an outside address or image", re.compile(
        r"!?\[[^\]\n]*\]\(\s*<?(https?:)?//|<\s*(img|image|iframe|script|a|link|embed|object|source|video|audio)\b[^>]*"
        r"\b(src|href|data)\s*=\s*[\"']?\s*(https?:)?//|^\s*\[[^\]\n]+\]:\s*<?(https?:)?//", re.I | re.M)),
]

NEGATION = re.compile(r"\b(never|don't|do not|must not|should not|avoid|instead of|rather than)\b[^.\n]*$", re.I)
# Rules a warning may mention ("never pipe curl into sh"): the others are never advice.
ADVISABLE = {"asks to reveal a system prompt or secrets", "reads credential files", "runs downloaded code",
             "sends data to an external address"}


def normalise(text: str) -> str:
    """`text` as it reads: NFKC-normalised, zero-width characters removed (shapes and meaning kept)."""
    return ZERO_WIDTH.sub("", unicodedata.normalize("NFKC", text))


def _advised_against(text: str, start: int) -> bool:
    """True when the match is the object of a warning ("never print secrets"), not an instruction."""
    return bool(NEGATION.search(text[max(0, start - 40):start]))


def _decoded_runs(text: str) -> list[str]:
    """The text that base64 runs in `text` decode to, where they decode to mostly printable UTF-8."""
    out: list[str] = []
    for m in BASE64_RUN.finditer(text):
        run = m.group(0)
        try:
            raw = base64.b64decode(run + "=" * (-len(run) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            continue
        if decoded and sum(c.isprintable() or c.isspace() for c in decoded) / len(decoded) > 0.9:
            out.append(decoded)
    return out


def _rule_problem(text: str) -> str | None:
    for reason, pattern in RULES:
        for m in pattern.finditer(text):
            if reason not in ADVISABLE or not _advised_against(text, m.start()):
                return f"{reason}: {m.group(0)[:80]!r}"
    return None


def screen(*texts: str) -> str | None:
    """The first reason to refuse these texts (a skill's name, description, body), or None when they
    are clean. The reason quotes at most 80 characters of what matched, never a secret."""
    raw = "\n".join(texts)
    if TAG_CHARACTERS.search(raw):
        return "hides text in invisible Unicode tag characters"
    if BIDI_CONTROLS.search(raw):
        return "contains bidirectional text controls (text that reads in another order than it shows)"
    if HTML_COMMENT.search(raw):
        return "hides text in an HTML comment"
    joined = normalise(raw)
    problem = _rule_problem(joined)
    if problem is not None:
        return problem
    for decoded in _decoded_runs(joined):
        problem = _rule_problem(normalise(decoded))
        if problem is not None:
            return f"base64 text that {problem}"
    what = find_secret(joined)
    if what is not None:
        return f"contains what looks like a secret ({what}); skills must never carry secrets"
    return None


__all__ = ["RULES", "normalise", "screen"]
