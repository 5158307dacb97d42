"""Pure pieces of retrieval: tokenisation, query building, fusion, de-duplication (the injection: injection.py).

No I/O here: the library runs the FTS5 query, `index.py` holds the in-memory index, `credit.py`
does the usefulness arithmetic.
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..messages import last_user_text
from ..text import jaccard

WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_TERMS = 64
# Words that carry no signal about which skill fits.
STOPWORDS = frozenset("""
a about above after again all am an and any are as at be because been before being below between both but by
can could did do does doing done down during each few for from further had has have having he her here hers
how i if in into is it its itself just let me more most my myself no nor not now of off on once only or other
our ours out over own please same she should so some such than that the their them then there these they this
those through to too under until up very was we were what when where which while who whom why will with would
you your yours yourself help want need like make get use using used also ok okay thanks thank hi hello
""".split())

# FTS5 column weights: name, description, body. A skill's name and description say when it
# applies; its body says how. Measured on the tau2-bench retrieval benchmark (train split),
# a light body weight keeps long skills from winning on word count alone.
BM25_WEIGHTS = (10.0, 5.0, 0.1)

# Bumped whenever `index_text` changes, so stored FTS rows are rebuilt (SkillLibrary.reindex).
TOKENISER_VERSION = 2

# Humps of a camelCase or PascalCase word, keeping acronyms whole: "parseHTTPResponse2" -> parse, HTTP, Response2.
HUMP = re.compile(r"[a-z][A-Z]|[A-Z][A-Z][a-z]")
CAMEL_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+")


def _is_camel(piece: str) -> bool:
    """An ASCII word with humps inside it (getUser, parseHTTP, HTTPServer; not Word, not CSV)."""
    return piece.isascii() and HUMP.search(piece) is not None


def split_identifier(word: str) -> list[str]:
    """The lower-case parts of one identifier: snake_case, kebab-case, dotted.names and camelCase.

    `getUserDetails` -> [get, user, details]; `os.path.join` -> [os, path, join];
    a plain word gives itself.
    """
    parts: list[str] = []
    for piece in WORD.findall(word):
        humps = CAMEL_PART.findall(piece) if _is_camel(piece) else [piece]
        parts.extend(h.lower() for h in (humps or [piece]))
    return parts


def words(text: str) -> list[str]:
    """Lower-case words of `text` with identifiers split; a camelCase word also yields its compound."""
    out: list[str] = []
    for piece in WORD.findall(text):
        if not _is_camel(piece):
            out.append(piece.lower())
            continue
        humps = [h.lower() for h in CAMEL_PART.findall(piece)]
        if len(humps) > 1:
            out.append(piece.lower())
        out.extend(humps or [piece.lower()])
    return out


def query_terms(text: str) -> list[str]:
    """Distinct lower-case content words of `text`, in order of first appearance, at most MAX_TERMS.

    Identifiers are split (`get_user_details`, `getUserDetails`, `os.path.join`), so a query that
    names a tool finds skills that describe it in words.
    """
    seen: dict[str, None] = {}
    for word in words(text):
        if len(word) < 2 or word in STOPWORDS or word in seen:
            continue
        seen[word] = None
        if len(seen) == MAX_TERMS:
            break
    return list(seen)


def index_text(text: str) -> str:
    """Text for the FTS5 index: `text` plus the parts of its camelCase identifiers.

    FTS5's unicode61 tokeniser already splits on `_`, `-` and `.`; it keeps `getUserDetails`
    whole, so its parts are appended to make it findable as "get user details".
    """
    extra: dict[str, None] = {}
    for piece in WORD.findall(text):
        if _is_camel(piece):
            humps = CAMEL_PART.findall(piece)
            if len(humps) > 1:
                extra.update((h.lower(), None) for h in humps)
    return f"{text}\n{' '.join(extra)}" if extra else text


def match_expression(terms: Sequence[str]) -> str | None:
    """An FTS5 MATCH expression that ORs the quoted terms, or None when there are none."""
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


# ---- retrieval ids: self-describing, so a turn can be linked even if the log row is lost ----

def make_retrieval_id(refs: Sequence[tuple[int, int]]) -> str:
    """`r-<nonce>-<id>v<version>.<id>v<version>...` for the skill versions shown, in rank order."""
    return "r-" + secrets.token_hex(6) + "-" + ".".join(f"{sid}v{ver}" for sid, ver in refs)


# At most 18 digits a number, so every id and version fits an SQLite INTEGER (< 2**63).
RETRIEVAL_ID = re.compile(r"^r-[0-9a-f]{12}-((?:\d{1,18}v\d{1,18})(?:\.\d{1,18}v\d{1,18})*)?$")


def parse_retrieval_id(retrieval_id: str) -> list[tuple[int, int]] | None:
    """The (skill_id, version) pairs a retrieval id names, or None when it is not one."""
    m = RETRIEVAL_ID.match(retrieval_id)
    if not m:
        return None
    if not m.group(1):
        return []
    return [(int(a), int(b)) for a, b in (part.split("v") for part in m.group(1).split("."))]


# ---- the query: the task plus recent messages, boilerplate stripped ----

FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
URL = re.compile(r"\bhttps?://\S+")
LONG_TOKEN = re.compile(r"\S{48,}")  # hashes, base64, minified blobs
MESSAGE_CHARS = 600                  # of each recent message, after cleaning
CONTEXT_TERMS = 16                   # terms the messages may add to the query's own


def _message_parts(message: Any) -> tuple[str, str, list[str]]:
    """(role, text, tool names called) of an OpenAI-style message, a pydantic Message or a dict."""
    get = message.get if isinstance(message, dict) else lambda key, default=None: getattr(message, key, default)
    role = str(get("role", "") or "")
    content = get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(str((p.get("text") if isinstance(p, dict) else getattr(p, "text", None)) or "")
                         for p in content)
    else:
        text = ""
    calls = []
    for call in get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, dict) else getattr(call, "function", None)
        name = fn.get("name") if isinstance(fn, dict) else getattr(fn, "name", None)
        if name:
            calls.append(str(name))
    return role, text, calls


def clean_message(text: str, max_chars: int = MESSAGE_CHARS) -> str:
    """A message's words without the boilerplate: long code blocks, JSON dumps, URLs, blobs.

    A fenced block keeps its first three lines (they usually name what it is); a line that looks
    like a JSON or log dump is dropped.
    """
    def fence(m: re.Match[str]) -> str:
        lines = m.group(0).strip("`").splitlines()
        return "\n".join(lines[:3])
    text = FENCE.sub(fence, text)
    kept = []
    for line in text.splitlines():
        s = line.strip()
        if not s or (len(s) > 160 and s[0] in "{[<\"'") or s.count('":') > 3:
            continue
        kept.append(s)
    text = LONG_TOKEN.sub(" ", URL.sub(" ", " ".join(kept)))
    return text[:max_chars]


REQUEST_CHARS = 2000


def request_text(messages: Any) -> str:
    """The text a turn was asked: its last user message (what `fetch_skills` would have been sent),
    at most `REQUEST_CHARS`. Stored with the turn (`turns.request`) for experience to compare with."""
    return last_user_text(messages)[:REQUEST_CHARS]


@dataclass(frozen=True)
class RetrievalQuery:
    """What retrieval searches with: `text` (the task) and `context` (recent messages, cleaned)."""
    text: str
    context: str = ""

    def terms(self) -> list[str]:
        """The task's terms first, then at most CONTEXT_TERMS more from the messages."""
        own = query_terms(self.text)
        extra = [t for t in query_terms(self.context) if t not in own][:CONTEXT_TERMS]
        return (own + extra)[:MAX_TERMS]

    def dense_text(self) -> str:
        """What the dense encoder embeds: the task, then the first 400 characters of the context."""
        return f"{self.text}\n{self.context[:400]}".strip() if self.context else self.text


def build_query(query: str, messages: Sequence[Any] | None = None, max_messages: int = 4) -> RetrievalQuery:
    """The retrieval query from the task and the last `max_messages` user and assistant messages.

    System and developer prompts are skipped (they are the same every turn and would match the
    same skills every turn); tool results are skipped (dumps, not intent); an assistant's tool
    calls contribute the tool names only.
    """
    parts: list[str] = []
    for message in reversed(list(messages or [])):
        role, text, calls = _message_parts(message)
        if role not in ("user", "assistant"):
            continue
        piece = " ".join([clean_message(text), *calls]).strip()
        if piece and piece != query.strip():
            parts.append(piece)
        if len(parts) == max_messages:
            break
    return RetrievalQuery(text=query.strip(), context="\n".join(parts))


# ---- fusion of the lexical and dense lists ----

def normalise(scores: Mapping[int, float]) -> dict[int, float]:
    """Min-max scale to [0, 1]; a single item or a tie scales to 1."""
    if not scores:
        return {}
    lo, hi = min(scores.values()), max(scores.values())
    if hi - lo < 1e-12:
        return {k: 1.0 for k in scores}
    return {k: (v - lo) / (hi - lo) for k, v in scores.items()}


def fuse(lexical: Mapping[int, float], dense: Mapping[int, float], lexical_weight: float = 0.5,
         method: str = "blend", rrf_k: int = 60) -> dict[int, float]:
    """One relevance in [0, 1] per item from a lexical and a dense candidate list (item -> raw score).

    `blend`: each list min-max scaled, then `lexical_weight * lex + (1 - lexical_weight) * dense`
    (an item missing from a list scores 0 there). `rrf`: reciprocal rank fusion with the same
    weights, scaled so the best possible item scores 1. With one list empty, the other decides,
    each score divided by its best.
    """
    if not dense or not lexical:
        # One list: scale by its best score, keeping ratios (min-max would send the last to 0,
        # which weighs too much against usefulness in the ranking that follows).
        only = dense or lexical
        top = max(only.values(), default=0.0)
        return {k: max(v, 0.0) / top if top > 0 else 1.0 for k, v in only.items()}
    w_lex, w_dense = lexical_weight, 1.0 - lexical_weight
    out: dict[int, float] = {}
    if method == "rrf":
        top = w_lex / (rrf_k + 1) + w_dense / (rrf_k + 1)
        for weight, scores in ((w_lex, lexical), (w_dense, dense)):
            for rank, item in enumerate(sorted(scores, key=scores.__getitem__, reverse=True)):
                out[item] = out.get(item, 0.0) + weight / (rrf_k + rank + 1) / top
        return out
    if method != "blend":
        raise ValueError(f"fusion method {method!r} is not one of blend, rrf")
    for weight, scores in ((w_lex, lexical), (w_dense, dense)):
        for item, value in normalise(scores).items():
            out[item] = out.get(item, 0.0) + weight * value
    return out


# ---- near-identical skills are shown once ----

def shingles(text: str) -> frozenset[str]:
    """The set of word pairs of `text`: a cheap signature for near-duplicates.

    Pairs, not words: two different tools documented in the same template share most words
    but few pairs once their names and verbs differ.
    """
    ws = WORD.findall(text.lower())
    return frozenset(zip(ws, ws[1:])) if len(ws) > 1 else frozenset(ws)  # type: ignore[arg-type]


MASK_BITS = 1024


def bucket_mask(signature: frozenset) -> int:
    """The set's elements hashed into `MASK_BITS` buckets, as the bits of an int (within one process:
    string hashes are salted per process). An element of `a` alone in a bucket no element of `b`
    hashes to is certainly not in `b`: that bounds their overlap from above (`drop_near_duplicates`)."""
    bits = bytearray(MASK_BITS // 8)
    for item in signature:
        h = hash(item) & (MASK_BITS - 1)
        bits[h >> 3] |= 1 << (h & 7)
    return int.from_bytes(bits, "little")


def drop_near_duplicates(signatures: Sequence[frozenset], threshold: float = 0.8,
                         keys: Sequence[str] | None = None, limit: int | None = None,
                         masks: Sequence[int] | None = None) -> list[int]:
    """Indices to keep, in order: an item whose words overlap an earlier kept one's by Jaccard >=
    `threshold`, or whose key (a content hash) equals one, is dropped. The list is in rank order,
    so the better-ranked copy stays. Stops once `limit` are kept.

    With `masks` (`bucket_mask` of each signature) most pairs are ruled out without intersecting
    the sets: the result is the same, as the masks only bound the overlap from above."""
    kept: list[int] = []
    seen_keys: set[str] = set()
    sizes = [len(sig) for sig in signatures]
    pops = [m.bit_count() for m in masks] if masks is not None else []
    t = threshold

    def near(i: int, j: int) -> bool:
        la, lb = sizes[i], sizes[j]
        # |a & b| / |a | b| >= t needs min(|a|, |b|) >= t * max(|a|, |b|): most pairs fail that cheaply
        if min(la, lb) < t * max(la, lb):
            return False
        if masks is not None:
            either = (masks[i] | masks[j]).bit_count()
            # buckets of one set's only: each holds at least one element the other set lacks
            bound = min(la - (either - pops[j]), lb - (either - pops[i]))  # >= |a & b|
            # Jaccard <= bound / (la + lb - bound), computed as `jaccard` does (so ties agree)
            if la + lb - bound > 0 and bound / (la + lb - bound) < t:
                return False
        return jaccard(signatures[i], signatures[j]) >= t

    for i in range(len(signatures)):
        if limit is not None and len(kept) >= limit:
            break
        if keys is not None and keys[i] in seen_keys:
            continue
        if any(near(i, j) for j in kept):
            continue
        kept.append(i)
        if keys is not None:
            seen_keys.add(keys[i])
    return kept


def prune_terms(terms: Sequence[str], doc_freqs: Mapping[str, int], n_docs: int, postings_budget: int,
                min_terms: int = 4) -> list[str]:
    """The query terms worth scoring: rare ones first, within a budget of postings to score.

    FTS5 computes BM25 for every row a query matches, so cost grows with the summed document
    frequency of the terms; what a term adds to the score shrinks as it gets commoner (FTS5
    clamps the IDF of a term in more than half the rows to ~0). So: drop terms no skill has,
    drop terms in more than half the rows (unless nothing else is left), then keep the rarest
    terms while their postings fit `postings_budget` (always at least `min_terms`).
    """
    present = [t for t in terms if doc_freqs.get(t, 0) > 0]
    useful = [t for t in present if doc_freqs[t] * 2 <= n_docs] or sorted(present, key=doc_freqs.__getitem__)[:1]
    kept: list[str] = []
    used = 0
    for t in sorted(useful, key=lambda t: doc_freqs[t]):
        if len(kept) >= min_terms and used + doc_freqs[t] > postings_budget:
            break
        kept.append(t)
        used += doc_freqs[t]
    return [t for t in terms if t in set(kept)]
