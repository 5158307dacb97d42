"""Secret detection and redaction (`metaclaw_mcp.privacy`): what must never be stored, shown or trained on."""
from __future__ import annotations

import json

import pytest

from metaclaw_mcp.privacy import find_secret, find_secrets, redact, redact_json

PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7Vt1q2K3xZp9LmNoPqRsTuVwXyZaBcDeFgHiJkLmNoPqRsTu\n"
       "Q1w2E3r4T5y6U7i8O9p0AaSsDdFfGgHhJjKkLlZzXxCcVvBbNnMm1234567890ab\n-----END RSA PRIVATE KEY-----")

SECRETS = [
    ("AKIAIOSFODNN7EXAMPLE", "AWS access key"),
    ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "high-entropy string"),          # an AWS secret key
    ("github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV12345", "GitHub token"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "GitHub token"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "Stripe key"),
    ("sk-proj-abcdefghijklmnop1234567890", "API key"),
    ("tml-AbCdEfGhIjKlMnOpQrStUv1234", "API key"),
    ("xoxb-1234567890-abcdefghij", "API key"),
]


@pytest.mark.parametrize("secret, kind", SECRETS)
def test_each_kind_is_redacted_whole(secret, kind):
    text = f"here it is: {secret} (keep it safe)"
    out = redact(text)
    assert secret not in out
    assert out == f"here it is: [REDACTED:{find_secret(text)}] (keep it safe)"
    assert kind == find_secret(text)


def test_the_whole_private_key_is_redacted_not_only_its_header():
    out = redact(f"my key:\n{PEM}\nuse it")
    assert out == "my key:\n[REDACTED:private key]\nuse it"
    assert "MIIEpAIBAAKCAQEA" not in out and "Q1w2E3r4" not in out


def test_credentials_in_urls_are_redacted_and_the_rest_kept():
    out = redact("connect to postgres://admin:hunter2pass@db.example.com:5432/app now")
    assert "hunter2pass" not in out and "admin:" not in out
    assert out.startswith("connect to postgres://[REDACTED:") and out.endswith("@db.example.com:5432/app now")


def test_password_assignments_are_redacted():
    assert "correcthorsebattery" not in redact("the password = 'correcthorsebattery' for staging")


@pytest.mark.parametrize("text", [
    "The meeting is on 2026-04-03 at the Berlin office.",
    "Use pandas to_csv(path, index=False, encoding='utf-8').",
    "Run git log and check commit 3f9a2b1c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a.",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "see https://docs.python.org/3/library/asyncio-task.html#asyncio.TaskGroup",
    "path /usr/lib/python3.11/site-packages/detect_secrets/plugins/high_entropy_strings.py",
    "The token: the one in the config file.",
    "a camelCaseIdentifierNameThatIsLongButNotRandom",
    "",
])
def test_ordinary_text_is_unchanged(text):
    assert redact(text) == text
    assert find_secrets(text) == []


def test_redaction_of_json_text_keeps_it_json():
    messages = [{"role": "user", "content": f"deploy with {PEM} and AKIAIOSFODNN7EXAMPLE"}]
    out = json.loads(redact(json.dumps(messages)))
    assert "MIIEpAIBAAKCAQEA" not in out[0]["content"] and "AKIA" not in out[0]["content"]
    # a header with no footer stops at the end of the key's characters, not at the end of the text
    half = json.dumps([{"content": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk"}, {"content": "next"}])
    assert json.loads(redact(half))[1] == {"content": "next"}


def test_redact_json_redacts_every_string_and_keeps_keys():
    value = {"messages": [{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE"}], "n": 3, "ok": True}
    assert redact_json(value) == {"messages": [{"role": "user", "content": "key [REDACTED:AWS access key]"}],
                                  "n": 3, "ok": True}


# ---- through the server: nothing stores, shows or hands out a secret ----

@pytest.mark.anyio
async def test_secrets_are_redacted_before_storage_and_never_shown(tmp_path):
    import sqlite3

    from mcp import Client

    from metaclaw_mcp.app import open_app
    from metaclaw_mcp.config import load_config
    from metaclaw_mcp.server import build_server

    aws = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    pat = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV12345"
    config = load_config(home=tmp_path / "home", load_starter_skills=False)
    async with open_app(config) as app, Client(build_server(app)) as client:
        rep = await client.call_tool("report_turn", {
            "session_id": "s1", "messages": [{"role": "user", "content": f"deploy with aws_secret_access_key={aws}"}],
            "response": f"used {pat}", "metadata": {"env": f"postgres://admin:hunter2pass@db.example.com/app"},
            "tokens": {"prompt_ids": [1, 2], "completion_ids": [3], "logprobs": [-0.1]}})
        out = rep.structured_content
        assert not rep.is_error and set(out["redacted"]) == {"messages", "response", "metadata", "tokens"}
        rated = await client.call_tool("rate_turn", {"turn_id": out["turn_id"], "score": -1.0,
                                                     "feedback": f"never paste {aws} here"})
        assert not rated.is_error
        digest = await client.call_tool("evolve_skills", {})
        clean = await client.call_tool("report_turn", {"session_id": "s1", "messages": [{"role": "user", "content": "hi"}],
                                                       "response": "hello"})
        assert clean.structured_content["redacted"] == []
    dump = "\n".join(sqlite3.connect(config.database).iterdump())
    for secret in (aws, pat, "hunter2pass"):
        assert secret not in dump
        assert secret not in json.dumps(digest.structured_content)
    assert "[REDACTED:" in dump
    row = sqlite3.connect(config.database).execute("SELECT prompt_ids, completion_ids FROM turns WHERE id = ?",
                                                  (out["turn_id"],)).fetchone()
    assert row == (None, None)
