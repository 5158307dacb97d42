"""Lexical search: FTS5 BM25 over the skills' name, description and body, within a postings budget.

FTS5 computes BM25 for every row a query matches, so the rarest terms are kept while their
summed document frequency fits `POSTINGS_BUDGET` (`retrieval.prune_terms`); namespace, status
and category are checked against the in-memory mirror, which is as fresh as the query.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..store import Database
from .mirror import RETRIEVABLE, NamespaceState
from .retrieval import BM25_WEIGHTS, RetrievalQuery, match_expression, prune_terms

DF_CACHE = 50_000         # query terms whose document frequency is remembered
POSTINGS_BUDGET = 600     # summed document frequency of the terms one lexical query scores (FTS5
                          # computes BM25 for every row matched: about 2 us a row)
MIN_TERMS = 3             # terms a lexical query keeps over that budget: alone,
MIN_TERMS_HYBRID = 2      # and beside the vectors (measured at 10k skills: tau2 R@5 and MRR the
                          # same as with 3, 0.37 ms less p50, the third term being a common one)


class LexicalSearch:
    """BM25 over `skills_fts` for one database, with the document frequencies of query terms cached
    until a skill changes (`skills_gen`)."""

    def __init__(self, db: Database):
        self.db = db
        self._df_cache: dict[str, int] = {}
        self._df_gen = -1
        self._fts_rows = 0

    async def doc_freqs(self, terms: Sequence[str], skills_gen: int) -> dict[str, int]:
        """How many FTS rows each term matches (as FTS5 tokenises it), cached until a skill changes."""
        if self._df_gen != skills_gen:
            self._df_cache.clear()
            self._fts_rows = int(await self.db.scalar("SELECT COUNT(*) FROM skills") or 0)
            self._df_gen = skills_gen
        todo = [t for t in terms if t not in self._df_cache]
        if todo:
            sql = "SELECT " + ", ".join(["(SELECT COUNT(*) FROM skills_fts WHERE skills_fts MATCH ?)"] * len(todo))
            row = await self.db.fetchone(sql, [match_expression([t]) for t in todo])
            if len(self._df_cache) > DF_CACHE:
                self._df_cache.clear()
            self._df_cache.update(zip(todo, (int(v) for v in row)))  # type: ignore[union-attr]
        return {t: self._df_cache[t] for t in terms}

    async def search(self, query: RetrievalQuery, state: NamespaceState, n: int, skills_gen: int,
                     categories: Sequence[str] | None = None, min_terms: int = MIN_TERMS) -> dict[int, float]:
        """skill id -> BM25 score (higher is better) of the `n` best retrievable matches."""
        terms = query.terms()
        doc_freqs = await self.doc_freqs(terms, skills_gen)
        expr = match_expression(prune_terms(terms, doc_freqs, self._fts_rows, POSTINGS_BUDGET, min_terms))
        if expr is None:
            return {}
        w_name, w_desc, w_body = BM25_WEIGHTS
        limit = n if len(state.metas) * 2 >= self._fts_rows else 4 * n
        while True:
            # FTS5 alone (no join): namespace, status and category are checked against the
            # in-memory state, which is as fresh as this query (refreshed just before).
            rows = await self.db.fetchall(
                f"SELECT rowid, bm25(skills_fts, {w_name}, {w_desc}, {w_body}) AS rank FROM skills_fts "
                "WHERE skills_fts MATCH ? ORDER BY rank LIMIT ?", (expr, limit))
            wanted = set(categories) if categories else None
            out: dict[int, float] = {}
            for sid, rank_ in rows:
                meta = state.metas.get(sid)
                if meta is None or meta.status not in RETRIEVABLE or (wanted and meta.category not in wanted):
                    continue
                out[sid] = -float(rank_)
                if len(out) == n:
                    return out
            if len(rows) < limit:
                return out
            limit *= 8  # other namespaces or retired skills took the places: look further

