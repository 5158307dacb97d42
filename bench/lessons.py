"""Lessons come back: a month of work replayed through the four tools, over stdio.

Two scenarios, written for this bench (the material is their own). In each, a user teaches
standing rules by correcting the agent; after each correction the agent writes the lesson in its
own words that day (`evolve_skills(proposals=[...])`, citing the failed turn), so each rule has
several paraphrases, each with its own name.

- `a` (default): over 24 simulated days, seven rules, each taught on three different days from
  three different requests. One is a standing preference that applies whatever the topic (start
  every answer with a one-line summary), and its descriptions say so; the others are conventions
  of a kind of work (dates, money, CSV files, destructive database changes, quoting sources,
  commits).
- `b`: over 30 days, a software team's assistant that also does its lead's personal admin: eight
  rules (type hints and docstrings, key=value logging, SI units written out, error messages that
  say what to do, surname-first names, masked secrets, UTC offsets with times), each taught on two
  to four days, with descriptions from one word to a long sentence. The standing preference,
  British spelling, is never described as being for every answer: that it applies to every
  request is for the server to learn from the turns that needed it. Written apart from `a` and
  never tuned to, it checks that a retrieval change carries beyond the scenario it was made for.

Between the teaching rounds, and after them, come the measured rounds: ordinary requests that
need one to three of the rules already taught (a few none), most of them without naming the rule ("What did
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
    python bench/lessons.py --scenario b
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


# ---- Scenario B: a software team's assistant that also does its lead's personal admin ----
# Eight rules, each taught on two to four days over 30 days. The standing preference (British
# spelling) never says in its descriptions that it is for every answer: that it applies whatever
# the request is for the server to learn from the turns that needed it.
RULES_B = ("typing", "logging", "units", "errors", "names", "secrets", "timezones", "spelling")

TEACHING_B = [
    # ---- typing: type hints and a docstring on each new Python function ----
    Teaching(1, "typing", "Write a function that turns a list of order lines into a total per customer.",
             "def totals(lines):\n    out = {}\n    for l in lines: ...",
             "No annotations and no docstring. New functions get typed parameters, a return type and a "
             "docstring, always.",
             Lesson("annotate-new-functions", "Use when writing a new Python function or method.",
                    "Each new def gets type hints on every parameter and on its return value, and a docstring "
                    "that says what it returns and when it raises. Write `def totals(lines: list[Line]) -> "
                    "dict[str, Decimal]:` rather than a bare signature.")),
    Teaching(10, "typing", "Add a small utility that retries a flaky HTTP call three times.",
             "def retry(fn, n=3):\n    for _ in range(n): ...",
             "Same as before: annotate it and give it a docstring.",
             Lesson("typed-documented-python", "Python conventions of this team.",
                    "Code handed to this team is annotated (PEP 484 hints on arguments and result, "
                    "`Callable[[], T]` for callbacks) and documented: a docstring under every def, first "
                    "line a sentence about what the function gives back.")),
    Teaching(21, "typing", "Split the report generator into smaller pieces.",
             "Split it into build_header(data), build_rows(data) and build_footer(data).",
             "The new helpers have neither hints nor docstrings. Same rule as for any other function.",
             Lesson("helpers-signatures-docstrings",
                    "Use when refactoring code into new helpers, adding methods to a class, or otherwise "
                    "creating Python callables that other people on the team will read, review and maintain "
                    "long after the change that introduced them.",
                    "Helpers carved out of a larger function are new functions too: give each a typed "
                    "signature and a docstring before handing the change over, private ones included.")),
    # ---- logging: the logger with key=value fields, never print ----
    Teaching(2, "logging", "The import job sometimes skips rows. Add something so we can see when it does.",
             "Added print(f'skipped {row}') in the loop.",
             "We never print in application code. Use the module logger and key=value fields, like "
             "log.warning('row skipped row=%d reason=%s', n, reason).",
             Lesson("logger-not-print", "Use when code has to report progress, warnings or diagnostics.",
                    "Diagnostics go through `log = logging.getLogger(__name__)`, never print(). Each record is "
                    "an event name followed by key=value fields: `log.warning('row skipped row=%d reason=%s', "
                    "n, reason)`, so the log search can filter on them.")),
    Teaching(8, "logging", "Show me how long each stage of the pipeline takes.",
             "print('stage', name, time.time() - t0)",
             "Print again. Log it with fields: stage=parse seconds=1.42.",
             Lesson("key-value-log-lines", "Instrumentation.",
                    "Timings and counters are log records with named fields (`stage=parse seconds=1.42 "
                    "rows=5000`), at INFO, through the logging module; no print statements.")),
    Teaching(15, "logging", "The webhook handler fails without a trace; make its failures visible.",
             "Wrapped the body in try/except and print the exception.",
             "Use log.exception with the context as key=value pairs. No print.",
             Lesson("structured-logging-fields",
                    "Use when adding error handling, tracing, timing or debugging output to a service.",
                    "Inside except blocks call `log.exception('webhook failed event=%s source=%s', ...)`; "
                    "outside them log.info/warning, always with key=value context fields rather than free "
                    "prose, and never print to stdout.")),
    Teaching(26, "logging", "Give the backfill script a progress indicator.",
             "print(f'{i}/{n} done') every thousand rows.",
             "Scripts too: the logger, with done= and total= fields.",
             Lesson("observability-via-logger",
                    "Use for scripts, jobs and services alike, whenever the program tells the operator what "
                    "it is doing or how far it has got.",
                    "Progress and status go to the logger as key=value records (`backfill progress done=4000 "
                    "total=12000`), so cron mail, journald and the log search see the same lines.")),
    # ---- units: SI units with the unit's name written out ----
    Teaching(4, "units", "How heavy is the rack we are shipping to the data centre, fully loaded?",
             "About 900 lbs.",
             "SI units, with the unit written out: 408 kilograms. Not pounds, and not a bare 'kg' either.",
             Lesson("si-units-spelled-out",
                    "Use when an answer gives a distance, weight, temperature, speed, size or other measurement.",
                    "State quantities in SI units with the unit's name in full after the number: 408 kilograms, "
                    "12 metres, 21 degrees Celsius, 30 kilometres per hour. Convert pounds, feet, miles and "
                    "Fahrenheit; never leave a number without its unit.")),
    Teaching(18, "units", "How far is the new office from the station?",
             "About half a mile, ten minutes on foot.",
             "Metric, and spell the unit: 800 metres.",
             Lesson("metric-measures", "Distances, weights, sizes.",
                    "Metric only, unit spelled out: '800 metres', '2.5 kilograms', never miles, ounces or "
                    "abbreviations such as m or kg.")),
    # ---- errors: say what was wrong and what to do ----
    Teaching(5, "errors", "Add a check that the config file has a database URL.",
             "if not url: raise ValueError('bad config')",
             "That message helps nobody. Say what was wrong and what to do: 'config.toml has no "
             "database_url; add it under [db]'.",
             Lesson("actionable-error-messages",
                    "Use when writing an exception, a validation message or any error text a person will read.",
                    "An error message names what was wrong, with the offending value or file, and tells the "
                    "reader what to do next: \"config.toml has no database_url: add database_url = "
                    "'postgres://...' under [db]\". Never 'bad config' or 'error'.")),
    Teaching(13, "errors", "Make the CLI refuse to run without an API key.",
             "sys.exit('error: no key')",
             "Tell them which key is missing and how to provide it.",
             Lesson("errors-say-what-and-fix", "Use for exceptions and CLI failures.",
                    "Failure text has two parts: the cause (ACME_API_KEY is not set) and the remedy (export it, "
                    "or pass --api-key). Exit with a non-zero status after printing it to stderr.")),
    Teaching(24, "errors", "Validate the upload form so it rejects files over the size limit.",
             "return 'Invalid file'",
             "Which limit, how big was the file, what should they do instead?",
             Lesson("failure-text-cause-and-remedy",
                    "Use when code rejects input, fails a check or refuses an operation, so that whoever sees "
                    "the message can put it right without reading the source.",
                    "A rejection states the rule that failed and the value that broke it, then the way out: "
                    "'photo.png is 14 megabytes; the limit is 10 megabytes: resize it or upload a PDF'.")),
    # ---- names: surname, given name ----
    Teaching(6, "names", "Who attended the quarterly planning session? Put it in the minutes.",
             "Attendees: Anna Berg, Tom Okafor, Priya Nair.",
             "In reports people go surname first: Berg, Anna; Nair, Priya; Okafor, Tom.",
             Lesson("surname-comma-given-name", "Use when listing people in minutes, reports or rosters.",
                    "Write each person as 'Surname, Given name' (Berg, Anna) and sort by surname, in minutes, "
                    "reports, tables and lists of attendees.")),
    Teaching(19, "names", "Write up who is on call next month.",
             "Week 1: Priya Nair, week 2: Tom Okafor ...",
             "Surname, given name, as in the minutes.",
             Lesson("people-listed-family-name-first",
                    "Use when a document names colleagues: a rota, an org chart, an attendance list or a handover "
                    "note that other teams will file and search by family name.",
                    "Family name first, then a comma and the given name: 'Nair, Priya'. This holds in rotas "
                    "and handovers as much as in formal reports.")),
    # ---- secrets: never repeat a secret, mask it ----
    Teaching(7, "secrets", "Why can't the deploy script reach the registry? Output pasted below (token=ghp_x81...).",
             "Your token ghp_x81Qe2...Lm9 has expired; create a new one.",
             "Don't repeat the token back to me. Mask secrets: ghp_****Lm9 at most.",
             Lesson("mask-secrets", "Use when a reply would contain a password, token or API key.",
                    "Never reproduce a secret in a reply, a file or a log line. Refer to it by kind and at most "
                    "its last four characters (ghp_****1Lm9), even when the user pasted it first.")),
    Teaching(16, "secrets", "Set up the .env file for the staging server.",
             "DATABASE_PASSWORD=St4ging!2026\nSTRIPE_KEY=sk_test_51H...",
             "Real credentials don't belong in an answer. Placeholders, and say where the value lives.",
             Lesson("credentials-as-placeholders",
                    "Use when writing config files, environment files or connection strings.",
                    "Write credentials as placeholders (DATABASE_PASSWORD=<from the vault: staging/db>) and "
                    "name where the real value is kept; a real password or key never appears in the text.")),
    Teaching(27, "secrets", "Give me the curl command that calls the billing API, as I ran it yesterday.",
             "curl -H 'Authorization: Bearer sk_live_9dK2...' https://billing/api/v2/invoices",
             "The key was in there in full. Mask it.",
             Lesson("redact-keys-in-commands", "Sensitive values.",
                    "In commands, headers and URLs replace the secret part with $TOKEN or ****, e.g. "
                    "`-H \"Authorization: Bearer $BILLING_TOKEN\"`.")),
    # ---- timezones: state the UTC offset with a time ----
    Teaching(3, "timezones", "When is the release call with the Singapore team?",
             "Thursday at 9:00.",
             "9:00 where? Give the UTC offset with times: 09:00 UTC+08:00.",
             Lesson("times-with-utc-offset", "Use when an answer states a time of day.",
                    "Give every clock time with its UTC offset, 09:00 UTC+08:00, and when two places are "
                    "involved, both; zone abbreviations such as CET or EST alone are ambiguous.")),
    Teaching(11, "timezones", "At what time did the nightly backup run?",
             "At 2 am.",
             "Offset, please: 02:00 UTC+00:00.",
             Lesson("clock-times-need-offset", "Schedules and timestamps.",
                    "A time without an offset is incomplete: write 02:00 UTC+00:00, 14:30 UTC+01:00.")),
    Teaching(17, "timezones", "Book a slot for the interview with the candidate in Toronto.",
             "Booked Tuesday 15:00.",
             "Whose 15:00? Write the offset.",
             Lesson("state-offset-for-meetings",
                    "Use when arranging meetings, calls or deadlines with people in other places.",
                    "For meetings across places, give the time with its offset for each side: 15:00 UTC+01:00 "
                    "(10:00 UTC-04:00 in Toronto).")),
    Teaching(25, "timezones", "When did the outage start, going by the alerts?",
             "It started at 14:32.",
             "With the offset: 14:32 UTC+01:00.",
             Lesson("timestamps-utc-offset",
                    "Use when reporting when something happened, such as incidents, deploys, alerts and log "
                    "entries, whose times are otherwise read in the reader's own zone and misplace the event "
                    "by hours.",
                    "Event times carry the offset they were recorded in (14:32 UTC+01:00); for an incident "
                    "timeline, keep one offset throughout and say which.")),
    # ---- spelling: British English, a standing preference that no description calls one ----
    Teaching(9, "spelling", "Draft a note to the team about the new office layout.",
             "We've reorganized the floor so the color-coded zones center on the kitchen ...",
             "British spelling: reorganised, colour, centre. That is how we write here.",
             Lesson("british-spelling", "This user writes British English.",
                    "Spell the British way: colour, organise, centre, licence (noun), catalogue, travelling, "
                    "grey, programme (but computer program).")),
    Teaching(14, "spelling", "Explain the difference between a thread and a process.",
             "A process has its own memory; threads share it, which makes the behavior harder to optimize ...",
             "Behaviour, optimise. British English, please, and not only in letters.",
             Lesson("uk-english-conventions", "Spelling convention of this team.",
                    "-our, -ise and -re endings (behaviour, optimise, metre), 'licence' as the noun and "
                    "'license' as the verb, doubled l in modelled and cancelled.")),
    Teaching(22, "spelling", "What should I pack for the hiking trip?",
             "A gray fleece, your favorite boots, and a flashlight ...",
             "Grey, favourite, torch. I keep asking for British English, whatever we talk about.",
             Lesson("spell-like-oxford",
                    "Use when writing English prose, comments or documentation for this user, in the spelling "
                    "and vocabulary of the United Kingdom.",
                    "UK spelling and words: grey, favourite, torch, holiday, autumn, flat; -ise verbs; dates "
                    "and measures in British style.")),
]

# Measured rounds: (day, request, rules it needs). British spelling applies to every answer once
# taught; the others only where the work is of their kind. Most requests do not name their rule.
ROUNDS_B = [
    (4, "What time does Monday's stand-up start for the colleague joining from Auckland?", {"timezones"}),
    (4, "Write a function that reads sensor readings and returns the mean per sensor.", {"typing"}),
    (5, "How long is the drive from Leeds to York?", {"units"}),
    (5, "Add a helper that parses the config file.", {"typing", "logging"}),
    (6, "Recommend a board game for four players.", set()),
    (6, "The cron job runs twice on some nights; add something that shows us when it starts.", {"logging"}),
    (7, "The importer crashes on an empty file; make it fail properly instead.", {"errors"}),
    (7, "Who came to the design review yesterday? Add them to the notes.", {"names"}),
    (8, "My request returns 401. This is the header I sent: Authorization: Bearer a81f9c2e77d4. What is wrong?",
     {"secrets"}),
    (8, "The spec sheet says the server room ceiling is 10 ft. Will a 2.1 m rack fit on a 30 cm plinth?", {"units"}),
    (9, "Suggest a name for the new meeting room.", set()),
    (10, "Add a function that converts the thermostat's readings before they are stored.", {"typing", "units"}),
    (10, "When does the maintenance window in Frankfurt begin for the team in Chicago?", {"timezones"}),
    (11, "The payment client just says 'failed' when a card is declined; improve that.", {"errors"}),
    (11, "List this month's new starters for the welcome email.", {"names"}),
    (12, "Write the check that a new password meets the policy.", {"typing", "errors"}),
    (12, "What does the worker do between jobs? I want to see it in production.", {"logging"}),
    (13, "Here is my kubeconfig; why does kubectl pick the wrong cluster?", {"secrets"}),
    (13, "Explain what a race condition is to a new joiner.", set()),
    (14, "How much does the new monitor weigh, and how wide is it?", {"units"}),
    (14, "Write a script that removes old Docker images and reports what it removed.", {"typing", "logging"}),
    (15, "When does the Sydney office open, in our terms?", {"timezones"}),
    (15, "Prepare the attendance record for the fire drill.", {"names"}),
    (16, "The deploy failed; here is the full environment dump from the runner. What happened?", {"secrets"}),
    (16, "Make the scheduler turn down jobs whose start date is in the past.", {"errors"}),
    (17, "Write a class that caches exchange rates for an hour.", {"typing"}),
    (17, "What time is the San Francisco webinar for us in Madrid?", {"timezones"}),
    (18, "How fast was I cycling if I did 20 miles in an hour and a quarter?", {"units"}),
    (18, "Summarise the retrospective for the wiki, with who raised each point.", {"names"}),
    (19, "The email worker sometimes hangs; add what we need to find out where.", {"logging"}),
    (19, "Draft a birthday message for my sister.", set()),
    (20, "Write the validation for postcodes in the signup form.", {"typing", "errors"}),
    (20, "Send the new contractor the database connection details so they can start.", {"secrets"}),
    (21, "The all-hands is at 10:00 in New York. When do I join from Berlin?", {"timezones"}),
    (21, "How much luggage can I take on the flight to Edinburgh?", {"units"}),
    (22, "Add timing around each database query in the report service.", {"logging"}),
    (22, "Who is on the interview panel for the backend role?", {"names"}),
    (23, "Rewrite what the parser says when a line has too many columns.", {"errors"}),
    (23, "Add a command-line tool that renames photos by the day they were taken.", {"typing", "logging"}),
    (24, "Here is the .npmrc from my laptop; why does npm install fail behind the proxy?", {"secrets"}),
    (24, "Write the dashboard tiles that show today's temperature and wind in the car park.", {"units"}),
    (25, "Record when the nightly sync starts and finishes, so operations can see it.", {"logging", "timezones"}),
    (25, "Plan a weekend in Bath for two.", set()),
    (26, "Write the handover note for the person covering my on-call shift.", {"names", "timezones"}),
    (26, "Add a function that returns how much disk a folder takes up.", {"typing", "units"}),
    (27, "The login endpoint answers 500 when the email field is missing; fix the response.", {"errors"}),
    (27, "The tracker says the delivery van drove 340 miles this week. Is that more than last week's 500 km?",
     {"units"}),
    (28, "Give me the command to test the SMTP login: user ops, password Tr0ub4dor&3.", {"secrets"}),
    (28, "Write up the incident timeline for the postmortem, with who did what.", {"timezones", "names"}),
    (29, "Add a retry loop around the S3 upload that tells us about each attempt.", {"typing", "logging"}),
    (29, "Which colleagues have birthdays in March? Make a list for the card.", {"names"}),
    (29, "What is the difference between latency and throughput?", set()),
    (30, "The discount on the train tickets ends at midnight Paris time. When is that for me in London?",
     {"timezones"}),
    (30, "Make the upload endpoint refuse files that are too big.", {"errors"}),
    (30, "How much water should I carry on a 15 km hike in summer?", {"units"}),
    (30, "Write a function that merges two sorted lists.", {"typing"}),
    (30, "What was in the .env file you found in the old repository?", {"secrets"}),
]


@dataclass(frozen=True)
class Scenario:
    description: str
    rules: tuple[str, ...]
    teaching: list[Teaching]
    rounds: list[tuple[int, str, set[str]]]
    standing: tuple[str, ...]    # rules needed in every round after they were first taught


SCENARIOS = {
    "a": Scenario("a month of office work: dates, money, CSV files, backups, sources, commits; "
                  "a summary line on top of every answer", RULES, TEACHING, ROUNDS, ("summary",)),
    "b": Scenario("a software team's assistant and its lead's personal admin: type hints, logging, SI units, "
                  "error messages, names, secrets, UTC offsets; British spelling throughout",
                  RULES_B, TEACHING_B, ROUNDS_B, ("spelling",)),
}


def needed_rules(scenario: Scenario, day: int, rules: set[str]) -> set[str]:
    """A round's needed rules: its own, plus each standing rule of the scenario once it has been taught."""
    return set(rules) | {r for r in scenario.standing if day > min(t.day for t in scenario.teaching if t.rule == r)}


def check(scenario: Scenario) -> None:
    """Each round needs only rules taught by its day (teaching comes first on a shared day)."""
    first = {r: min(t.day for t in scenario.teaching if t.rule == r) for r in scenario.rules}
    assert {t.rule for t in scenario.teaching} == set(scenario.rules), "a rule is never taught"
    for day, request, rules in scenario.rounds:
        assert all(first[r] <= day for r in rules), f"day {day}: {request!r} needs a rule not yet taught"


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


async def replay(scenario: Scenario, env: dict[str, str], verbose: bool) -> dict[str, Score]:
    tokens = count_tokens_fn()
    home = tempfile.mkdtemp(prefix="lessons-")
    server_env = {k: v for k, v in os.environ.items() if not k.startswith(("METACLAW_", "TINKER_"))}
    server_env.update({"METACLAW_HOME": home, **env})
    cli = str(Path(sys.executable).parent / "metaclaw-mcp")
    params = StdioServerParameters(command=cli, args=["serve"], env=server_env)
    scores = {"default": Score(), "bm25 (lessons only)": Score(), "inject everything": Score()}
    skill_rule: dict[str, str] = {}          # slug of a skill made or revised from a lesson -> its rule
    written: list[tuple[str, Lesson]] = []   # every lesson written, as (rule, lesson)
    events: list[tuple[int, int, Any]] = ([(t.day, 0, t) for t in scenario.teaching]
                                          + [(d, 1, (d, q, r)) for d, q, r in scenario.rounds])
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
            need = needed_rules(scenario, day, own)
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
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="a",
                        help="a: office work, summary line on top (default); b: a software team and personal "
                             "admin, British spelling throughout")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    scenario = SCENARIOS[args.scenario]
    check(scenario)
    scores = anyio.run(replay, scenario, env, args.verbose)
    n = len(scores["default"].full)
    days = sorted({sum(t.rule == r for t in scenario.teaching) for r in scenario.rules})
    taught = f"{days[0]}" if len(days) == 1 else f"{days[0]}-{days[-1]}"
    print(f"\nscenario {args.scenario}: {scenario.description}")
    print(f"{len(scenario.teaching)} lessons taught ({len(scenario.rules)} rules x {taught} days), "
          f"{n} measured rounds"
          + (f", server env {env}" if env else ""))
    print(f"{'system':<22} {'full recall':>11} {'any recall':>10} {'precision':>10} {'injected tokens':>16}")
    for name, score in scores.items():
        print(score.row(name))


if __name__ == "__main__":
    main()
