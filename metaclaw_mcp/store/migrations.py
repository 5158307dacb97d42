"""Numbered schema migrations, applied in order and recorded in `schema_migrations`.

Each migration is a small named function of a sqlite3 connection. The store applies the
pending ones at open, each in one transaction together with its record, so a crash leaves
the schema at a numbered version. Append new ones; never edit old ones.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[int, str, Migration]] = []


def run_script(db: sqlite3.Connection, script: str) -> None:
    """Execute statements one by one (unlike executescript, this does not commit first)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            db.execute(pending)
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in migration: {pending[:80]!r}")


def migration(number: int) -> Callable[[Migration], Migration]:
    """Decorator: register the function as migration `number` (append in order; the name is recorded)."""
    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((number, fn.__name__, fn))
        return fn
    return register


@migration(1)
def m0001_initial_schema(db: sqlite3.Connection) -> None:
    """The first schema: turns and their ratings, skills with versions, embeddings and the FTS5 index,
    retrievals and skill uses, training batches, steps and checkpoints, evolutions, LLM usage, and kv."""
    run_script(db, """
    CREATE TABLE turns (
        id               TEXT PRIMARY KEY,
        namespace        TEXT NOT NULL,
        session_id       TEXT NOT NULL,
        messages         TEXT NOT NULL,            -- JSON list of OpenAI-style messages
        response         TEXT NOT NULL,
        model            TEXT,
        prompt_ids       TEXT,                     -- JSON int list, with the two below: fit for RL
        completion_ids   TEXT,
        logprobs         TEXT,
        metadata         TEXT NOT NULL DEFAULT '{}',
        retrieval_id     TEXT,
        idempotency_key  TEXT,
        request_hash     TEXT NOT NULL,            -- sha256 of the reported content, to check key reuse
        reward           REAL,                     -- fused from ratings; NULL until rated
        reward_source    TEXT,
        train_state      TEXT NOT NULL DEFAULT 'pending'
                         CHECK (train_state IN ('pending', 'rated', 'claimed', 'trained', 'skipped')),
        batch_id         INTEGER REFERENCES batches(id),
        skip_reason      TEXT,
        created_at       TEXT NOT NULL,
        rated_at         TEXT,
        UNIQUE (namespace, idempotency_key)
    );
    CREATE INDEX turns_train_state ON turns(train_state, namespace, rated_at);
    CREATE INDEX turns_session ON turns(namespace, session_id, created_at);
    CREATE INDEX turns_created ON turns(namespace, created_at);
    CREATE INDEX turns_batch ON turns(batch_id);

    CREATE TABLE ratings (
        id          INTEGER PRIMARY KEY,
        turn_id     TEXT NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
        source      TEXT NOT NULL CHECK (source IN ('user', 'env', 'agent', 'judge')),
        score       REAL NOT NULL CHECK (score BETWEEN -1.0 AND 1.0),
        feedback    TEXT,
        created_at  TEXT NOT NULL
    );
    CREATE INDEX ratings_turn ON ratings(turn_id);

    CREATE TABLE skills (
        id               INTEGER PRIMARY KEY,
        namespace        TEXT NOT NULL,
        slug             TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'retired')),
        current_version  INTEGER NOT NULL,
        status_reason    TEXT,
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        UNIQUE (namespace, slug)
    );
    CREATE INDEX skills_status ON skills(namespace, status);

    CREATE TABLE skill_versions (
        skill_id        INTEGER NOT NULL REFERENCES skills(id),
        version         INTEGER NOT NULL,
        name            TEXT NOT NULL,
        description     TEXT NOT NULL,
        body            TEXT NOT NULL,
        category        TEXT NOT NULL,
        source          TEXT NOT NULL,              -- starter | agent | llm | import | user
        provenance      TEXT NOT NULL DEFAULT '[]', -- JSON list of the turn ids it came from
        parent_version  INTEGER,
        content_hash    TEXT NOT NULL,
        metadata        TEXT NOT NULL DEFAULT '{}',
        created_at      TEXT NOT NULL,
        PRIMARY KEY (skill_id, version)
    );
    CREATE INDEX skill_versions_hash ON skill_versions(content_hash);

    -- Full-text index over the current version of each skill; rowid = skills.id.
    CREATE VIRTUAL TABLE skills_fts USING fts5(
        name, description, body, tokenize = 'porter unicode61 remove_diacritics 2'
    );

    -- Dense vectors per skill version (the embeddings extra fills it).
    CREATE TABLE skill_embeddings (
        skill_id    INTEGER NOT NULL,
        version     INTEGER NOT NULL,
        model       TEXT NOT NULL,
        dim         INTEGER NOT NULL,
        vector      BLOB NOT NULL,                  -- float32, little-endian
        PRIMARY KEY (skill_id, version, model),
        FOREIGN KEY (skill_id, version) REFERENCES skill_versions(skill_id, version)
    );

    -- What fetch_skills showed; the retrieval id itself also names the versions shown.
    CREATE TABLE retrievals (
        id          TEXT PRIMARY KEY,
        namespace   TEXT NOT NULL,
        session_id  TEXT,
        query       TEXT NOT NULL,
        items       TEXT NOT NULL,                  -- JSON [[skill_id, version, score], ...] in rank order
        created_at  TEXT NOT NULL
    );

    -- Which skill version was injected into which turn: the basis of credit.
    CREATE TABLE skill_uses (
        turn_id   TEXT NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
        skill_id  INTEGER NOT NULL,
        version   INTEGER NOT NULL,
        rank      INTEGER,
        PRIMARY KEY (turn_id, skill_id),
        FOREIGN KEY (skill_id, version) REFERENCES skill_versions(skill_id, version)
    );
    CREATE INDEX skill_uses_skill ON skill_uses(skill_id, version);

    CREATE TABLE batches (
        id           INTEGER PRIMARY KEY,
        namespace    TEXT NOT NULL,
        kind         TEXT NOT NULL,                 -- rl | distill
        loss_fn      TEXT NOT NULL,
        state        TEXT NOT NULL CHECK (state IN ('claimed', 'training', 'trained', 'failed')),
        attempts     INTEGER NOT NULL DEFAULT 0,
        last_error   TEXT,
        backend      TEXT,
        created_at   TEXT NOT NULL,
        finished_at  TEXT
    );
    CREATE INDEX batches_state ON batches(state);

    CREATE TABLE train_steps (
        id          INTEGER PRIMARY KEY,
        batch_id    INTEGER NOT NULL REFERENCES batches(id),
        step        INTEGER NOT NULL UNIQUE,
        loss        REAL,
        mean_reward REAL,
        n_datums    INTEGER NOT NULL,
        metrics     TEXT NOT NULL DEFAULT '{}',
        created_at  TEXT NOT NULL
    );

    CREATE TABLE checkpoints (
        id          INTEGER PRIMARY KEY,
        step        INTEGER NOT NULL,
        kind        TEXT NOT NULL,                  -- sampler | state
        path        TEXT NOT NULL,                  -- tinker://... or a local folder
        backend     TEXT NOT NULL,
        created_at  TEXT NOT NULL
    );

    CREATE TABLE evolutions (
        id           INTEGER PRIMARY KEY,
        namespace    TEXT NOT NULL,
        mode         TEXT NOT NULL,                 -- agent | llm | digest
        failures     TEXT NOT NULL DEFAULT '[]',    -- JSON turn ids read
        proposals    TEXT NOT NULL DEFAULT '[]',    -- JSON proposals as received
        accepted     TEXT NOT NULL DEFAULT '[]',    -- JSON [{id, slug, version}]
        rejected     TEXT NOT NULL DEFAULT '[]',    -- JSON [{name, reason}]
        llm          TEXT,                          -- provider/model that wrote the proposals
        created_at   TEXT NOT NULL
    );

    CREATE TABLE llm_usage (
        id                 INTEGER PRIMARY KEY,
        namespace          TEXT NOT NULL,
        provider           TEXT NOT NULL,
        purpose            TEXT NOT NULL,           -- judge | evolve
        prompt_tokens      INTEGER NOT NULL DEFAULT 0,
        completion_tokens  INTEGER NOT NULL DEFAULT 0,
        created_at         TEXT NOT NULL
    );

    -- Small durable settings and counters (trainer paused, running baselines, ...).
    CREATE TABLE kv (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );
    """)


@migration(2)
def m0002_evolution_prompt_and_answer(db: sqlite3.Connection) -> None:
    """Keep what an LLM-driven evolution run sent and received, for auditing."""
    run_script(db, """
    ALTER TABLE evolutions ADD COLUMN prompt TEXT;
    ALTER TABLE evolutions ADD COLUMN answer TEXT;
    """)


@migration(3)
def m0003_skill_credit_and_change_counters(db: sqlite3.Connection) -> None:
    """Per skill version reward sums kept by triggers (the basis of credit), per namespace totals
    and a running mean reward (the baseline), and change counters the in-memory retrieval index
    polls to refresh cheaply.

    A turn, when first rated, records the namespace's running mean reward at that moment
    (`turns.credit_baseline`); each skill version injected into it adds the turn's residual
    (reward minus that baseline) to its sums, so its uplift is measured against comparable turns:
    those of the same period, when the other skills around were the same. Triggers keep the sums
    right whoever writes turns, ratings or skills, in the same transaction.
    """
    run_script(db, """
    CREATE TABLE change_counters (
        name   TEXT PRIMARY KEY,                    -- skills | skills_reset | stats
        value  INTEGER NOT NULL
    );
    INSERT INTO change_counters(name, value) VALUES ('skills', 1), ('skills_reset', 1), ('stats', 1);

    ALTER TABLE skills ADD COLUMN gen INTEGER NOT NULL DEFAULT 1;   -- change_counters 'skills' at its last change
    CREATE INDEX skills_gen ON skills(gen);

    -- Per skill version: turns it was injected into, and the rewards of those that are rated.
    CREATE TABLE skill_stats (
        skill_id    INTEGER NOT NULL,
        version     INTEGER NOT NULL,
        uses        INTEGER NOT NULL DEFAULT 0,
        rated       INTEGER NOT NULL DEFAULT 0,
        reward_sum  REAL NOT NULL DEFAULT 0,
        reward_sq   REAL NOT NULL DEFAULT 0,
        resid_sum   REAL NOT NULL DEFAULT 0,        -- sum of (reward - turn's credit_baseline)
        resid_sq    REAL NOT NULL DEFAULT 0,
        gen         INTEGER NOT NULL DEFAULT 1,     -- change_counters 'stats' at its last change
        PRIMARY KEY (skill_id, version)
    );
    CREATE INDEX skill_stats_gen ON skill_stats(gen);

    -- Per namespace: the same sums over every rated turn, the baseline uplift is measured against.
    CREATE TABLE reward_totals (
        namespace   TEXT PRIMARY KEY,
        rated       INTEGER NOT NULL DEFAULT 0,
        reward_sum  REAL NOT NULL DEFAULT 0,
        reward_sq   REAL NOT NULL DEFAULT 0,
        running_mean REAL                           -- exponentially weighted mean reward (weight 0.02)
    );
    ALTER TABLE turns ADD COLUMN credit_baseline REAL;  -- running_mean when the turn was first rated

    INSERT INTO skill_stats(skill_id, version, uses, rated, reward_sum, reward_sq)
    SELECT u.skill_id, u.version, COUNT(*), COUNT(t.reward), COALESCE(SUM(t.reward), 0),
           COALESCE(SUM(t.reward * t.reward), 0)
    FROM skill_uses u JOIN turns t ON t.id = u.turn_id GROUP BY u.skill_id, u.version;
    INSERT INTO reward_totals(namespace, rated, reward_sum, reward_sq, running_mean)
    SELECT namespace, COUNT(*), SUM(reward), SUM(reward * reward), AVG(reward) FROM turns WHERE reward IS NOT NULL
    GROUP BY namespace;

    CREATE TRIGGER skills_gen_insert AFTER INSERT ON skills BEGIN
        UPDATE change_counters SET value = value + 1 WHERE name = 'skills';
        UPDATE skills SET gen = (SELECT value FROM change_counters WHERE name = 'skills') WHERE id = NEW.id;
    END;
    CREATE TRIGGER skills_gen_update AFTER UPDATE OF namespace, slug, status, current_version ON skills BEGIN
        UPDATE change_counters SET value = value + 1 WHERE name = 'skills';
        UPDATE skills SET gen = (SELECT value FROM change_counters WHERE name = 'skills') WHERE id = NEW.id;
    END;
    CREATE TRIGGER skills_gen_delete AFTER DELETE ON skills BEGIN
        UPDATE change_counters SET value = value + 1 WHERE name IN ('skills', 'skills_reset');
    END;

    CREATE TRIGGER skill_uses_credit_insert AFTER INSERT ON skill_uses BEGIN
        UPDATE change_counters SET value = value + 1 WHERE name = 'stats';
        INSERT INTO skill_stats(skill_id, version, uses, rated, reward_sum, reward_sq, gen)
        SELECT NEW.skill_id, NEW.version, 1, t.reward IS NOT NULL, COALESCE(t.reward, 0),
               COALESCE(t.reward * t.reward, 0), (SELECT value FROM change_counters WHERE name = 'stats')
        FROM turns t WHERE t.id = NEW.turn_id
        ON CONFLICT(skill_id, version) DO UPDATE SET uses = uses + 1, rated = rated + excluded.rated,
            reward_sum = reward_sum + excluded.reward_sum, reward_sq = reward_sq + excluded.reward_sq,
            gen = excluded.gen;
        UPDATE skill_stats SET
            resid_sum = resid_sum + (SELECT COALESCE(t.reward - t.credit_baseline, 0) FROM turns t WHERE t.id = NEW.turn_id),
            resid_sq = resid_sq + (SELECT COALESCE((t.reward - t.credit_baseline) * (t.reward - t.credit_baseline), 0)
                                   FROM turns t WHERE t.id = NEW.turn_id)
        WHERE skill_id = NEW.skill_id AND version = NEW.version;
    END;
    CREATE TRIGGER skill_uses_credit_delete AFTER DELETE ON skill_uses BEGIN
        UPDATE change_counters SET value = value + 1 WHERE name = 'stats';
        UPDATE skill_stats SET uses = uses - 1,
            rated = rated - COALESCE((SELECT t.reward IS NOT NULL FROM turns t WHERE t.id = OLD.turn_id), 0),
            reward_sum = reward_sum - COALESCE((SELECT t.reward FROM turns t WHERE t.id = OLD.turn_id), 0),
            reward_sq = reward_sq - COALESCE((SELECT t.reward * t.reward FROM turns t WHERE t.id = OLD.turn_id), 0),
            resid_sum = resid_sum - COALESCE((SELECT t.reward - t.credit_baseline FROM turns t WHERE t.id = OLD.turn_id), 0),
            resid_sq = resid_sq - COALESCE((SELECT (t.reward - t.credit_baseline) * (t.reward - t.credit_baseline)
                                            FROM turns t WHERE t.id = OLD.turn_id), 0),
            gen = (SELECT value FROM change_counters WHERE name = 'stats')
        WHERE skill_id = OLD.skill_id AND version = OLD.version;
    END;
    CREATE TRIGGER turns_reward_credit AFTER UPDATE OF reward ON turns WHEN OLD.reward IS NOT NEW.reward BEGIN
        UPDATE change_counters SET value = value + 1 WHERE name = 'stats';
        -- first rating: remember the baseline of the moment (the first turn of a namespace is its own)
        UPDATE turns SET credit_baseline = COALESCE(
            (SELECT running_mean FROM reward_totals WHERE namespace = NEW.namespace), NEW.reward)
        WHERE id = NEW.id AND credit_baseline IS NULL AND NEW.reward IS NOT NULL;
        UPDATE skill_stats SET
            rated = rated + (NEW.reward IS NOT NULL) - (OLD.reward IS NOT NULL),
            reward_sum = reward_sum + COALESCE(NEW.reward, 0) - COALESCE(OLD.reward, 0),
            reward_sq = reward_sq + COALESCE(NEW.reward * NEW.reward, 0) - COALESCE(OLD.reward * OLD.reward, 0),
            resid_sum = resid_sum + (SELECT COALESCE(NEW.reward - t.credit_baseline, 0)
                                     - COALESCE(OLD.reward - t.credit_baseline, 0) FROM turns t WHERE t.id = NEW.id),
            resid_sq = resid_sq + (SELECT COALESCE((NEW.reward - t.credit_baseline) * (NEW.reward - t.credit_baseline), 0)
                                   - COALESCE((OLD.reward - t.credit_baseline) * (OLD.reward - t.credit_baseline), 0)
                                   FROM turns t WHERE t.id = NEW.id),
            gen = (SELECT value FROM change_counters WHERE name = 'stats')
        WHERE (skill_id, version) IN (SELECT skill_id, version FROM skill_uses WHERE turn_id = NEW.id);
        INSERT INTO reward_totals(namespace, rated, reward_sum, reward_sq, running_mean)
        VALUES (NEW.namespace, (NEW.reward IS NOT NULL) - (OLD.reward IS NOT NULL),
                COALESCE(NEW.reward, 0) - COALESCE(OLD.reward, 0),
                COALESCE(NEW.reward * NEW.reward, 0) - COALESCE(OLD.reward * OLD.reward, 0), NEW.reward)
        ON CONFLICT(namespace) DO UPDATE SET rated = rated + excluded.rated,
            reward_sum = reward_sum + excluded.reward_sum, reward_sq = reward_sq + excluded.reward_sq,
            running_mean = COALESCE(running_mean, excluded.running_mean)
                           + 0.02 * (COALESCE(NEW.reward, running_mean) - COALESCE(OLD.reward, running_mean));
    END;
    -- A deleted turn takes its reward out of the sums; its skill_uses rows then go by cascade.
    CREATE TRIGGER turns_delete_credit BEFORE DELETE ON turns WHEN OLD.reward IS NOT NULL BEGIN
        UPDATE turns SET reward = NULL WHERE id = OLD.id;
    END;
    """)


@migration(4)
def m0004_experience(db: sqlite3.Connection) -> None:
    """For retrieval's experience: rated turns by namespace and rating time (it reads the newly
    rated ones), and which linked skills the agent named as used (`skill_ids`), apart from those
    only injected (`retrieval_id`)."""
    run_script(db, """
    CREATE INDEX turns_rated ON turns(namespace, rated_at) WHERE reward IS NOT NULL;
    ALTER TABLE skill_uses ADD COLUMN named INTEGER NOT NULL DEFAULT 0;
    """)


@migration(5)
def m0005_turn_request(db: sqlite3.Connection) -> None:
    """turns.request: what the turn was asked (its last user message, cut to 2,000 chars), so that
    experience reads that and not every past conversation whole. Filled in for past turns (a row
    whose messages cannot be read gets an empty request, never a failed upgrade)."""
    import json

    def last_user_text(messages_json: str) -> str:   # as this migration reads it, whatever changes later
        try:
            messages = json.loads(messages_json)
        except (TypeError, ValueError):
            return ""
        for message in reversed(messages if isinstance(messages, list) else []):
            if not isinstance(message, dict) or message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                return content[:2000]
            if isinstance(content, list):
                return "\n".join(str(p.get("text") or "") for p in content if isinstance(p, dict))[:2000]
        return ""

    db.execute("ALTER TABLE turns ADD COLUMN request TEXT")
    last = 0
    # in rowid ranges, each read whole before its rows are updated (no scan open across writes);
    # small ones, as a stored conversation may be megabytes
    while batch := db.execute("SELECT rowid, messages FROM turns WHERE rowid > ? ORDER BY rowid LIMIT 100",
                              (last,)).fetchall():
        db.executemany("UPDATE turns SET request = ? WHERE rowid = ?", [(last_user_text(r[1]), r[0]) for r in batch])
        last = batch[-1][0]


@migration(6)
def m0006_credited_uses(db: sqlite3.Connection) -> None:
    """Credit follows what the agent said it used: `skill_uses.credited` is 1 for a skill the agent
    named (`skill_ids`), and for every linked skill of a turn that named none; a skill only injected
    into a turn that named others was, by the agent's word, not used, and gets neither credit nor
    blame (experience reads turns the same way). The credit triggers count credited rows only, and
    the sums are rebuilt so that past turns are counted the same way."""
    run_script(db, """
    ALTER TABLE skill_uses ADD COLUMN credited INTEGER NOT NULL DEFAULT 1;
    UPDATE skill_uses SET credited = 0 WHERE named = 0 AND turn_id IN (SELECT turn_id FROM skill_uses WHERE named = 1);

    DROP TRIGGER skill_uses_credit_insert;
    DROP TRIGGER skill_uses_credit_delete;
    DROP TRIGGER turns_reward_credit;

    CREATE TRIGGER skill_uses_credit_insert AFTER INSERT ON skill_uses WHEN NEW.credited = 1 BEGIN
        UPDATE change_counters SET value = value + 1 WHERE name = 'stats';
        INSERT INTO skill_stats(skill_id, version, uses, rated, reward_sum, reward_sq, gen)
        SELECT NEW.skill_id, NEW.version, 1, t.reward IS NOT NULL, COALESCE(t.reward, 0),
               COALESCE(t.reward * t.reward, 0), (SELECT value FROM change_counters WHERE name = 'stats')
        FROM turns t WHERE t.id = NEW.turn_id
        ON CONFLICT(skill_id, version) DO UPDATE SET uses = uses + 1, rated = rated + excluded.rated,
            reward_sum = reward_sum + excluded.reward_sum, reward_sq = reward_sq + excluded.reward_sq,
            gen = excluded.gen;
        UPDATE skill_stats SET
            resid_sum = resid_sum + (SELECT COALESCE(t.reward - t.credit_baseline, 0) FROM turns t WHERE t.id = NEW.turn_id),
            resid_sq = resid_sq + (SELECT COALESCE((t.reward - t.credit_baseline) * (t.reward - t.credit_baseline), 0)
                                   FROM turns t WHERE t.id = NEW.turn_id)
        WHERE skill_id = NEW.skill_id AND version = NEW.version;
    END;
    CREATE TRIGGER skill_uses_credit_delete AFTER DELETE ON skill_uses WHEN OLD.credited = 1 BEGIN
        UPDATE change_counters SET value = value + 1 WHERE name = 'stats';
        UPDATE skill_stats SET uses = uses - 1,
            rated = rated - COALESCE((SELECT t.reward IS NOT NULL FROM turns t WHERE t.id = OLD.turn_id), 0),
            reward_sum = reward_sum - COALESCE((SELECT t.reward FROM turns t WHERE t.id = OLD.turn_id), 0),
            reward_sq = reward_sq - COALESCE((SELECT t.reward * t.reward FROM turns t WHERE t.id = OLD.turn_id), 0),
            resid_sum = resid_sum - COALESCE((SELECT t.reward - t.credit_baseline FROM turns t WHERE t.id = OLD.turn_id), 0),
            resid_sq = resid_sq - COALESCE((SELECT (t.reward - t.credit_baseline) * (t.reward - t.credit_baseline)
                                            FROM turns t WHERE t.id = OLD.turn_id), 0),
            gen = (SELECT value FROM change_counters WHERE name = 'stats')
        WHERE skill_id = OLD.skill_id AND version = OLD.version;
    END;
    CREATE TRIGGER turns_reward_credit AFTER UPDATE OF reward ON turns WHEN OLD.reward IS NOT NEW.reward BEGIN
        UPDATE change_counters SET value = value + 1 WHERE name = 'stats';
        UPDATE turns SET credit_baseline = COALESCE(
            (SELECT running_mean FROM reward_totals WHERE namespace = NEW.namespace), NEW.reward)
        WHERE id = NEW.id AND credit_baseline IS NULL AND NEW.reward IS NOT NULL;
        UPDATE skill_stats SET
            rated = rated + (NEW.reward IS NOT NULL) - (OLD.reward IS NOT NULL),
            reward_sum = reward_sum + COALESCE(NEW.reward, 0) - COALESCE(OLD.reward, 0),
            reward_sq = reward_sq + COALESCE(NEW.reward * NEW.reward, 0) - COALESCE(OLD.reward * OLD.reward, 0),
            resid_sum = resid_sum + (SELECT COALESCE(NEW.reward - t.credit_baseline, 0)
                                     - COALESCE(OLD.reward - t.credit_baseline, 0) FROM turns t WHERE t.id = NEW.id),
            resid_sq = resid_sq + (SELECT COALESCE((NEW.reward - t.credit_baseline) * (NEW.reward - t.credit_baseline), 0)
                                   - COALESCE((OLD.reward - t.credit_baseline) * (OLD.reward - t.credit_baseline), 0)
                                   FROM turns t WHERE t.id = NEW.id),
            gen = (SELECT value FROM change_counters WHERE name = 'stats')
        WHERE (skill_id, version) IN (SELECT skill_id, version FROM skill_uses WHERE turn_id = NEW.id AND credited = 1);
        INSERT INTO reward_totals(namespace, rated, reward_sum, reward_sq, running_mean)
        VALUES (NEW.namespace, (NEW.reward IS NOT NULL) - (OLD.reward IS NOT NULL),
                COALESCE(NEW.reward, 0) - COALESCE(OLD.reward, 0),
                COALESCE(NEW.reward * NEW.reward, 0) - COALESCE(OLD.reward * OLD.reward, 0), NEW.reward)
        ON CONFLICT(namespace) DO UPDATE SET rated = rated + excluded.rated,
            reward_sum = reward_sum + excluded.reward_sum, reward_sq = reward_sq + excluded.reward_sq,
            running_mean = COALESCE(running_mean, excluded.running_mean)
                           + 0.02 * (COALESCE(NEW.reward, running_mean) - COALESCE(OLD.reward, running_mean));
    END;

    UPDATE change_counters SET value = value + 1 WHERE name = 'stats';
    DELETE FROM skill_stats;
    INSERT INTO skill_stats(skill_id, version, uses, rated, reward_sum, reward_sq, resid_sum, resid_sq, gen)
    SELECT u.skill_id, u.version, COUNT(*), COUNT(t.reward), COALESCE(SUM(t.reward), 0),
           COALESCE(SUM(t.reward * t.reward), 0), COALESCE(SUM(t.reward - t.credit_baseline), 0),
           COALESCE(SUM((t.reward - t.credit_baseline) * (t.reward - t.credit_baseline)), 0),
           (SELECT value FROM change_counters WHERE name = 'stats')
    FROM skill_uses u JOIN turns t ON t.id = u.turn_id WHERE u.credited = 1 GROUP BY u.skill_id, u.version;
    """)


@migration(7)
def m0007_staged_imports(db: sqlite3.Connection) -> None:
    """Imports are written in chunks, each its own short transaction, and published by one last
    one, so other writers get the lock in between and the user still sees all or nothing.

    Until published, an imported skill that is new has `skills.current_version = 0`: every read
    joins the current version, so no read sees it (its slug is taken, so nothing else claims the
    name meanwhile); a new version of an existing skill is a `skill_versions` row that is not
    current yet. `import_staged` lists what each batch wrote (with the index text publishing puts
    in `skills_fts` for the existing skills it changes); `import_batches` names the process that
    writes it, so a batch whose process died is recognised and its rows are removed."""
    run_script(db, """
    CREATE TABLE import_batches (
        id          INTEGER PRIMARY KEY,
        namespace   TEXT NOT NULL,
        host        TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        started_at  TEXT NOT NULL,
        touched_at  TEXT NOT NULL                   -- each chunk's commit; an old one is abandoned
    );
    CREATE TABLE import_staged (
        batch_id        INTEGER NOT NULL REFERENCES import_batches(id),
        skill_id        INTEGER NOT NULL,
        version         INTEGER NOT NULL,           -- becomes skills.current_version when published
        new_skill       INTEGER NOT NULL,           -- 1: the skills row is the batch's own (current_version 0)
        fts_name        TEXT,                       -- index text for skills_fts; NULL for a new skill,
        fts_description TEXT,                       -- whose index row is written when staged
        fts_body        TEXT,
        PRIMARY KEY (batch_id, skill_id)
    );
    CREATE INDEX import_staged_skill ON import_staged(skill_id, version);
    """)


@migration(8)
def m0008_principals(db: sqlite3.Connection) -> None:
    """Who wrote what, where tokens are bound to namespaces (`access.py`): the token's name on each
    turn, rating and skill version (NULL: the single-user default, no token). Learning uses it so
    that no one token decides for the others in a namespace they share."""
    run_script(db, """
    ALTER TABLE turns ADD COLUMN principal TEXT;
    ALTER TABLE ratings ADD COLUMN principal TEXT;
    ALTER TABLE skill_versions ADD COLUMN principal TEXT;
    """)


@migration(9)
def m0009_dashboard_indexes(db: sqlite3.Connection) -> None:
    """Indexes for the dashboard's reads (`dashboard/queries.py`), each covering its query so a page
    reads no table rows (bench/dashboard.py: 100k turns, 10k skills): turns per namespace and UTC day
    in day order (turns, rated turns and reward per day, without a sort; with the id the ratings join
    needs); ratings by turn with their source and score (ratings per day by source); and ratings by
    source (the judge's latest ratings first, for its agreement with users and environments)."""
    run_script(db, """
    CREATE INDEX turns_day ON turns(namespace, substr(created_at, 1, 10), reward, id, created_at);
    CREATE INDEX ratings_turn_source ON ratings(turn_id, source, score);
    CREATE INDEX ratings_source ON ratings(source);
    """)
