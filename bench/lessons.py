"""Lessons come back: a month of work replayed through the four tools, over stdio.

The scenario (written for this bench; the material is its own): over 24 simulated days a user
teaches seven standing rules by correcting the agent. Each rule is taught on three different
days, from three different requests, and after each correction the agent writes the lesson in
its own words that day (`evolve_skills(proposals=[...])`, citing the failed turn): three
paraphrases per rule, each with its own name. One rule is a standing preference that applies
whatever the topic (start every answer with a one-line summary); the others are conventions of
a kind of work (dates, money, CSV files, destructive database changes, quoting sources, commits).

Between the teaching rounds, and after them, come the measured rounds: ordinary requests that
need one to three of the rules already taught, most of them without naming the rule ("What did
the Oslo team spend on travel in May?" needs the money format). Each measured round is a
`fetch_skills(k=5)` in a new session; a lesson counts as returned when it is among `skills` or
named in `injection` (the one-line entries of progressive disclosure). The simulated agent then
reports the turn naming the lessons it used, and the user rates it +1 when every rule it needed
was there, else -1 with a correction (no new lesson is written on measured rounds, so every
system compares on the same lessons).

Printed, for the measured rounds, per system:
- full recall: share of rounds where every needed rule came back;
- any recall: share where at least one did;
- precision: of the lessons returned, the share that were needed (starter skills are not lessons);
- injected tokens: mean size of `injection` (SmolLM2's tokenizer from tests/data, else chars / 4).

Systems: the server as configured (default), plain SQLite FTS5 BM25 over every lesson written
(top 5, no consolidation), and injecting every lesson written.

    python bench/lessons.py
    python bench/lessons.py --env METACLAW_RETRIEVAL_MODE=lexical
    python bench/lessons.py --verbose        # each measured round: needed, returned, missed
"""
from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Lesson:
    name: str
    description: str
    body: str


@dataclass(frozen=True)
class Teaching:
    day: int
    rule: str
    request: str
    answer: str
    correction: str
    lesson: Lesson


RULES = ("dates", "money", "csv", "backup", "summary", "sources", "commit")

TEACHING = [
    # ---- dates: ISO 8601 calendar dates ----
    Teaching(1, "dates", "When does the lease on the Berlin office run out?",
             "The lease runs out on 3/4/27.",
             "Is that March or April? Write dates as 2027-04-03, year first, always.",
             Lesson("iso-8601-dates", "Use when an answer, file or message contains a calendar date.",
                    "Write every date as ISO 8601, YYYY-MM-DD (2027-04-03), never 3/4/27 or April 3rd: "
                    "day-month order differs between countries.")),
    Teaching(9, "dates", "Put the supplier audit on the shared calendar for the first Monday of next month.",
             "Added for Monday 02.11.",
             "Again an ambiguous date. The format is year-month-day with dashes.",
             Lesson("dates-year-month-day", "Use when writing a deadline, schedule, meeting day or any date.",
                    "Give dates as year-month-day with dashes, for example 2026-11-02. Do not use "
                    "dotted or slashed day/month forms, and add the weekday only after the ISO date.")),
    Teaching(16, "dates", "Which of the open invoices are past due?",
             "Invoices 17 and 22, due 12 Oct and 15 Oct.",
             "Dates must be ISO: 2026-10-12 and 2026-10-15.",
             Lesson("unambiguous-dates", "Use when listing due dates, expiry dates or timelines.",
                    "Dates are written 2026-10-12 style (ISO 8601) in every answer and table; spelled-out "
                    "months and numeric day/month orders are ambiguous to this team.")),
    # ---- money: two decimals and the currency code ----
    Teaching(2, "money", "Total the March invoices for the Lyon office.",
             "The total is about 48k euros.",
             "Wrong format: amounts need two decimals and the currency code, like 48,210.00 EUR.",
             Lesson("money-two-decimals-code", "Use when reporting or saving money amounts.",
                    "Write each money amount with exactly two decimals and its ISO 4217 code after it, "
                    "for example 1,234.50 EUR, in answers, tables and files alike.")),
    Teaching(8, "money", "What did the Oslo team spend on hotels last quarter?",
             "Roughly $3.2k.",
             "No rounding and no symbols: 3,214.80 NOK. Two decimals and the code, please.",
             Lesson("amounts-with-currency-code", "Use when giving a cost, price, budget, spend or total.",
                    "State amounts to the cent with the three-letter currency code after the number "
                    "(3,214.80 NOK), never rounded and never with a currency symbol alone.")),
    Teaching(15, "money", "How much is left in the marketing budget for December?",
             "About 12 thousand.",
             "Give the exact figure with two decimals and the currency: 12,040.00 GBP.",
             Lesson("exact-amounts-iso-currency", "Use when an answer mentions what something costs or earns.",
                    "Every sum of money is exact, has two decimal places and ends with its ISO currency "
                    "code, e.g. 12,040.00 GBP. Approximations like 'about 12k' are not acceptable.")),
    # ---- csv: header, UTF-8, no index ----
    Teaching(3, "csv", "Save the cleaned supplier list to suppliers.csv.",
             "Saved with df.to_csv('suppliers.csv').",
             "The file has an unnamed index column and no explicit encoding; write it with a header, UTF-8 "
             "and no index.",
             Lesson("csv-header-utf8-no-index", "Use when writing any CSV file.",
                    "Every CSV the agent writes has a header row, is encoded as UTF-8 and never includes "
                    "the dataframe index (pandas: index=False, encoding='utf-8').")),
    Teaching(10, "csv", "Export the open support tickets so the team can open them in a spreadsheet.",
             "Exported tickets.csv with pandas defaults.",
             "Same problem as before: no index column, and make the encoding UTF-8 with a header line.",
             Lesson("spreadsheet-export-format", "Use when exporting data for a spreadsheet or to a .csv file.",
                    "Exports for spreadsheets: a first line with column names, UTF-8 text, and no row index "
                    "column; with pandas call to_csv(path, index=False, encoding='utf-8').")),
    Teaching(17, "csv", "Write the attendee list from the workshop to a file I can import into the CRM.",
             "Wrote attendees.csv including the index.",
             "Drop the index and keep the header; UTF-8 only.",
             Lesson("tabular-files-clean", "Use when a table is written to disk for another tool to import.",
                    "Write tabular exports as UTF-8 CSV with a header row and without the index column, "
                    "so imports into CRMs and spreadsheets do not gain an unnamed first column.")),
    # ---- backup: snapshot before destructive changes ----
    Teaching(4, "backup", "Replace the staff table with the new export from HR.",
             "Dropped staff and loaded the new export.",
             "You destroyed the old data. Always snapshot a table as staff_backup_20260316 before replacing it.",
             Lesson("snapshot-table-before-replace", "Use before deleting, truncating or overwriting a table.",
                    "Before any statement that deletes, truncates or replaces a table, copy it to "
                    "<table>_backup_<YYYYMMDD> and say so in the answer.")),
    Teaching(11, "backup", "Clear out last year's rows from the events table.",
             "Ran DELETE FROM events WHERE year = 2025.",
             "No backup again. Copy the table first, then delete.",
             Lesson("backup-before-delete", "Use when removing rows or clearing data from a database.",
                    "First copy the table (CREATE TABLE events_backup_YYYYMMDD AS SELECT * FROM events), "
                    "then run the DELETE, and mention the backup's name in the reply.")),
    Teaching(18, "backup", "Reload the products table from tonight's feed.",
             "Truncated products and reloaded it.",
             "Where is the snapshot? Every destructive change starts with a dated copy.",
             Lesson("dated-copy-first", "Use when a load, migration or cleanup will overwrite existing rows.",
                    "Make a dated copy of the affected table (products_backup_20261118) before truncating, "
                    "reloading or migrating it, and report the copy's name.")),
    # ---- summary: a standing preference, whatever the topic ----
    Teaching(5, "summary", "Explain why our nightly build got slower this week.",
             "There are several factors. First, the cache ... (four paragraphs)",
             "Start with the conclusion. I want a one-line summary at the top of every answer.",
             Lesson("summary-line-first", "Use for every answer, whatever the task.",
                    "Open each reply with a single line that starts 'Summary:' and states the conclusion; "
                    "details follow after a blank line.")),
    Teaching(12, "summary", "Draft a reply to the landlord about the broken heating.",
             "Dear Mr Weber, I am writing to ...",
             "You forgot the summary line on top again. Every answer starts with it.",
             Lesson("tldr-on-top", "Use on all responses to this user.",
                    "Put a one-sentence 'Summary:' line first in every response, before drafts, code or "
                    "explanations.")),
    Teaching(19, "summary", "Compare the two job offers I pasted.",
             "Offer A pays more, but offer B ...",
             "Summary first, please, always.",
             Lesson("lead-with-conclusion", "Use whenever replying, on any topic.",
                    "Begin with one line, 'Summary: <the answer in a sentence>', then the detail. This is a "
                    "standing preference of the user for all replies.")),
    # ---- sources: cite the file and line ----
    Teaching(6, "sources", "What does the vendor contract say about early termination?",
             "It allows termination with 90 days' notice.",
             "Where does it say that? Quote the file and line you took it from.",
             Lesson("cite-file-and-line", "Use when stating what a document, contract or file says.",
                    "Back each claim about a document with its source as path:line (contracts/vendor.md:142) "
                    "and quote the sentence.")),
    Teaching(13, "sources", "Find where the request timeout is configured in the API service.",
             "It is set to 30 seconds in the config.",
             "Which config? Give me the path and the line number.",
             Lesson("point-to-source-location", "Use when answering where something is defined or configured.",
                    "Name the exact location, file path and line number (services/api/settings.py:57), and "
                    "show the line, instead of describing it vaguely.")),
    Teaching(20, "sources", "Which clause of the privacy policy covers data retention?",
             "The retention clause covers it.",
             "Cite it: file and line, with the quoted text.",
             Lesson("quote-with-reference", "Use when summarising policies, specs or documentation.",
                    "When reporting what a policy or spec says, include a reference in the form file:line "
                    "and the quoted words, so the user can check it.")),
    # ---- commit: tests before committing ----
    Teaching(7, "commit", "Commit the fix for the login redirect bug.",
             "Committed as 'fix login'.",
             "Did you run the tests? Always run the whole test suite before committing, and say it passed.",
             Lesson("run-tests-before-commit", "Use before committing or pushing code.",
                    "Run the full test suite before every commit or push and report the result; never commit "
                    "with failing or unrun tests.")),
    Teaching(14, "commit", "Push the refactor of the payment module to main.",
             "Pushed.",
             "Without running the suite? Tests first, then push.",
             Lesson("suite-green-then-push", "Use when pushing, merging or shipping changes.",
                    "Before a push or merge, run the test suite, wait for it to pass, and state the number of "
                    "tests that passed in the reply.")),
    Teaching(21, "commit", "Ship the hotfix for the CSV date parser.",
             "Shipped the hotfix.",
             "Did the tests pass? You must run them before anything goes out.",
             Lesson("verify-tests-pass-first", "Use when a code change is about to be committed, released or deployed.",
                    "Nothing is committed, released or deployed until the test suite has run green; say which "
                    "command ran and that it passed.")),
]

# Measured rounds: (day, request, rules it needs). The summary rule applies to every answer
# once taught; the others only where the work is of their kind.
ROUNDS = [
    (8, "When is the next board meeting, and what is on the agenda?", {"dates"}),
    (8, "Remove the test accounts from the users table.", {"backup"}),
    (9, "Write the list of overdue library books to overdue.csv.", {"csv"}),
    (9, "Summarise yesterday's incident report for the management team.", set()),
    (10, "What did the Oslo team spend on travel in May?", {"money"}),
    (10, "Tell me when each of the three contracts expires.", {"dates"}),
    (11, "Put the monthly sales figures per store into a file for the accountants.", {"csv", "money"}),
    (11, "Fix the typo in the README and commit it.", {"commit"}),
    (12, "Overwrite the prices table with the corrected prices.", {"backup", "money"}),
    (12, "Where is the retry limit for the email worker set?", {"sources"}),
    (13, "Quote me the price for 40 licences of the design tool.", {"money"}),
    (13, "Which tasks on the roadmap are due before the end of the year?", {"dates"}),
    (14, "Dump the survey responses into a spreadsheet-friendly file.", {"csv"}),
    (14, "What does the employee handbook say about remote work?", {"sources"}),
    (15, "Purge the sessions table of entries older than 30 days.", {"backup", "dates"}),
    (15, "Merge the feature branch for dark mode.", {"commit"}),
    (16, "How much did we pay the cleaning company in total this year?", {"money"}),
    (16, "Export the inventory counts to inventory.csv with the last stock-take date per item.",
     {"csv", "dates"}),
    (17, "Which section of the API spec describes pagination?", {"sources"}),
    (17, "Truncate the staging_orders table and reload it from the nightly dump.", {"backup"}),
    (18, "What is the average invoice amount per customer this quarter?", {"money"}),
    (18, "Schedule the server migration for the second weekend of January.", {"dates"}),
    (19, "Deploy the change to the rate limiter.", {"commit"}),
    (19, "Save the cleaned list of product codes and their prices to products.csv.", {"csv", "money"}),
    (20, "Find where the default currency is configured in the billing service.", {"sources"}),
    (20, "Drop the duplicate rows from the contacts table.", {"backup"}),
    (21, "What are the renewal dates and yearly costs of our software subscriptions?", {"dates", "money"}),
    (21, "Why did the checkout tests start failing after the upgrade?", set()),
    (22, "Write the payroll totals per department to payroll.csv.", {"csv", "money"}),
    (22, "Commit the updated translations and push them.", {"commit"}),
    (22, "What does our security policy say about password rotation?", {"sources"}),
    (22, "Delete all orders marked as cancelled from the orders table.", {"backup"}),
    (23, "List the conference deadlines we need to meet this spring.", {"dates"}),
    (23, "How much does the new laptop model cost with the student discount?", {"money"}),
    (23, "Release version 2.4 of the mobile app.", {"commit"}),
    (23, "Explain the difference between our two pricing tiers.", {"money"}),   # the answer states prices
    (24, "Replace the exchange_rates table with today's rates and tell me the date of the data.",
     {"backup", "dates"}),
    (24, "Where in the codebase is the session timeout defined?", {"sources"}),
    (24, "Export the list of refunds issued last month with their amounts to refunds.csv.", {"csv", "money"}),
    (24, "Write a short poem about autumn leaves for the newsletter.", set()),
]


def needed_rules(day: int, rules: set[str]) -> set[str]:
    """A round's needed rules: its own, plus the standing summary rule once it has been taught."""
    first_taught = min(t.day for t in TEACHING if t.rule == "summary")
    return set(rules) | ({"summary"} if day > first_taught else set())


def count_tokens_fn():  # noqa: ANN201 - returns a callable
    path = ROOT / "tests" / "data" / "smollm2-tokenizer" / "tokenizer.json"
    try:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(path))
        return lambda text: len(tok.encode(text).ids) if text else 0
    except Exception:  # noqa: BLE001 - without the tokenizers package the estimate stands in
        return lambda text: (len(text) + 3) // 4


def returned_slugs(out: dict[str, Any], slugs: set[str], k: int = 5) -> set[str]:
    """Slugs among `skills[:k]` or named in `injection` (progressive disclosure lists more by name)."""
    got = {s.get("slug") for s in (out.get("skills") or [])[:k] if isinstance(s, dict)}
    inj = out.get("injection") or ""
    got |= {s for s in slugs if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", inj)}
    return {s for s in got if s}


class Score:
    def __init__(self) -> None:
        self.full: list[bool] = []
        self.any: list[bool] = []
        self.returned = 0
        self.relevant = 0
        self.tokens: list[int] = []

    def add(self, needed: set[str], got_rules: list[set[str]], tokens: int) -> None:
        covered = set().union(*got_rules) if got_rules else set()
        self.full.append(needed <= covered)
        self.any.append(bool(needed & covered) if needed else True)
        self.returned += len(got_rules)
        self.relevant += sum(1 for rules in got_rules if rules & needed)
        self.tokens.append(tokens)

    def row(self, name: str) -> str:
        precision = self.relevant / self.returned if self.returned else 1.0
        return (f"{name:<22} {statistics.mean(self.full):>11.3f} {statistics.mean(self.any):>10.3f} "
                f"{precision:>10.3f} {statistics.mean(self.tokens):>16.0f}")


def bm25_top(lessons: list[tuple[str, Lesson]], query: str, k: int = 5) -> list[int]:
    """Indices of the `k` best lessons for `query` by plain FTS5 BM25 (terms OR'ed)."""
    con = sqlite3.connect(":memory:")
    con.execute("CREATE VIRTUAL TABLE f USING fts5(name, description, body)")
    con.executemany("INSERT INTO f(rowid, name, description, body) VALUES (?, ?, ?, ?)",
                    [(i, l.name.replace("-", " "), l.description, l.body) for i, (_, l) in enumerate(lessons)])
    terms = [w for w in re.findall(r"\w+", query.lower()) if len(w) > 2]
    if not terms:
        return []
    expr = " OR ".join(f'"{w}"' for w in terms)
    return [r[0] for r in con.execute("SELECT rowid FROM f WHERE f MATCH ? ORDER BY bm25(f) LIMIT ?", (expr, k))]


def render_all(lessons: list[tuple[str, Lesson]]) -> str:
    return "\n".join(f"### {l.name}\n_{l.description}_\n\n{l.body}\n" for _, l in lessons)


async def call(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise RuntimeError(f"{tool} failed: {text}")
    return result.structured_content or {}


async def replay(env: dict[str, str], verbose: bool) -> dict[str, Score]:
    tokens = count_tokens_fn()
    home = tempfile.mkdtemp(prefix="lessons-")
    server_env = {k: v for k, v in os.environ.items() if not k.startswith(("METACLAW_", "TINKER_"))}
    server_env.update({"METACLAW_HOME": home, **env})
    cli = str(Path(sys.executable).parent / "metaclaw-mcp")
    params = StdioServerParameters(command=cli, args=["serve"], env=server_env)
    scores = {"default": Score(), "bm25 (lessons only)": Score(), "inject everything": Score()}
    skill_rule: dict[str, str] = {}          # slug of a skill made or revised from a lesson -> its rule
    written: list[tuple[str, Lesson]] = []   # every lesson written, as (rule, lesson)
    events: list[tuple[int, int, Any]] = [(t.day, 0, t) for t in TEACHING] + [(d, 1, (d, q, r)) for d, q, r in ROUNDS]
    events.sort(key=lambda e: (e[0], e[1]))
    async with Client(params, read_timeout_seconds=120) as client:
        for n, (day, kind, item) in enumerate(events):
            if kind == 0:  # a teaching round: the agent's answer misses the rule; the user corrects it
                t: Teaching = item
                f = await call(client, "fetch_skills", {"query": t.request, "session_id": f"day-{day}-teach"})
                rep = await call(client, "report_turn", {
                    "session_id": f"day-{day}-teach", "messages": [{"role": "user", "content": t.request}],
                    "response": t.answer, "retrieval_id": f.get("retrieval_id")})
                await call(client, "rate_turn", {"turn_id": rep["turn_id"], "score": -1.0, "source": "user",
                                                 "feedback": t.correction})
                out = await call(client, "evolve_skills", {"proposals": [{
                    "name": t.lesson.name, "description": t.lesson.description, "body": t.lesson.body,
                    "category": "general", "addresses": [rep["turn_id"]]}]})
                for a in out.get("accepted") or []:
                    skill_rule[a["slug"]] = t.rule
                if verbose and not out.get("accepted"):
                    print(f"  day {day}: lesson {t.lesson.name} not accepted: {out.get('rejected')}")
                written.append((t.rule, t.lesson))
                continue
            _, request, own = item
            need = needed_rules(day, own)
            session = f"day-{day}-round-{n}"
            out = await call(client, "fetch_skills", {"query": request, "k": 5, "session_id": session})
            got = returned_slugs(out, set(skill_rule))
            lessons_got = [s for s in got if s in skill_rule]
            scores["default"].add(need, [{skill_rule[s]} for s in lessons_got], tokens(out.get("injection", "")))
            # the agent names the lessons it applied; the user rates the answer
            used = [s for s in lessons_got if skill_rule[s] in need]
            missed = need - {skill_rule[s] for s in lessons_got}
            rep = await call(client, "report_turn", {
                "session_id": session, "messages": [{"role": "user", "content": request}],
                "response": f"(answer applying {', '.join(sorted(used)) or 'no lesson'})",
                "retrieval_id": out.get("retrieval_id"), "skill_ids": used})
            await call(client, "rate_turn", {
                "turn_id": rep["turn_id"], "score": 1.0 if not missed else -1.0, "source": "user",
                "feedback": None if not missed else f"you forgot the {', '.join(sorted(missed))} rule again"})
            top = bm25_top(written, request)
            scores["bm25 (lessons only)"].add(need, [{written[i][0]} for i in top],
                                              tokens(render_all([written[i] for i in top])))
            scores["inject everything"].add(need, [{r} for r, _ in written], tokens(render_all(written)))
            if verbose:
                extra = sorted(f"{s}({skill_rule[s]})" for s in lessons_got if skill_rule[s] not in need)
                print(f"day {day:>2} {'OK  ' if not missed else 'MISS'} need={sorted(need)} missed={sorted(missed)} "
                      f"extra={extra} tokens={tokens(out.get('injection', ''))}  {request[:60]}")
                for s in out.get("skills") or []:
                    if s["slug"] in skill_rule and s["why"] != "standing":
                        print(f"      LESSON {'need' if skill_rule[s['slug']] in need else 'xtra'} rel {s['relevance']:.2f} "
                              f"score {s['score']:.2f} {s['disclosure']} {s['why']}")
                if missed:
                    for s in out.get("skills") or []:
                        print(f"      {s['slug']:34} {s['why']:11} rel {s['relevance']:.2f} use {s['usefulness']:+.2f}")
    if verbose:
        print(f"server home: {home}")
        print(f"skills made from the {len(written)} lessons written: {len(set(skill_rule))} "
              f"({', '.join(sorted(skill_rule))})")
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="server environment (repeatable), e.g. METACLAW_RETRIEVAL_MODE=lexical")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    scores = anyio.run(replay, env, args.verbose)
    n = len(scores["default"].full)
    print(f"\n{len(TEACHING)} lessons taught ({len(RULES)} rules x 3 days), {n} measured rounds"
          + (f", server env {env}" if env else ""))
    print(f"{'system':<22} {'full recall':>11} {'any recall':>10} {'precision':>10} {'injected tokens':>16}")
    for name, score in scores.items():
        print(score.row(name))


if __name__ == "__main__":
    main()
