"""Tokens bound to namespaces and a role: the token file, and each tool, resource and turn checked."""
from __future__ import annotations

import pytest

from metaclaw_mcp.access import LOCAL, Principal, TokenTable, new_token, token_entry
from metaclaw_mcp.errors import ConfigError, Forbidden


def test_token_file_entries_map_tokens_to_principals(tmp_path):
    agent, admin = new_token(), "plain-admin-token-0123456789"
    path = tmp_path / "tokens.toml"
    path.write_text(token_entry("laptop", agent, ["proj-a", "proj-b"]) + "\n"
                    f'[[token]]\nname = "ops"\ntoken = "{admin}"\nnamespaces = ["*"]\nrole = "admin"\n')
    table = TokenTable.load(path)
    assert agent not in path.read_text()                      # only its digest is stored
    laptop = table.lookup(agent)
    assert laptop == Principal("laptop", frozenset({"proj-a", "proj-b"}), "agent")
    assert laptop.may_use("proj-a") and not laptop.may_use("default")
    assert table.lookup(admin).every_namespace and table.lookup(admin).role == "admin"
    assert table.lookup("wrong") is None and table.lookup(agent + "x") is None and table.lookup("") is None


def test_check_says_which_namespaces_a_token_may_use():
    p = Principal("laptop", frozenset({"proj-a"}), "agent")
    p.check("proj-a")
    with pytest.raises(Forbidden, match="may not use namespace 'default'.*proj-a"):
        p.check("default")
    with pytest.raises(Forbidden, match="admin token"):
        p.check_admin("pausing training")
    LOCAL.check("anything")
    LOCAL.check_admin("anything")


@pytest.mark.parametrize("body, message", [
    ('[[token]]\nname = "a"\nnamespaces = ["x"]\n', "exactly one of `token` and `sha256`"),
    ('[[token]]\nname = "a"\ntoken = "short"\nnamespaces = ["x"]\n', "at least 16"),
    ('[[token]]\nname = "a"\nsha256 = "abc"\nnamespaces = ["x"]\n', "64 hex digits"),
    ('[[token]]\nname = "a"\ntoken = "0123456789abcdef"\nnamespaces = []\n', "non-empty list"),
    ('[[token]]\nname = "a"\ntoken = "0123456789abcdef"\nnamespaces = ["x"]\nrole = "root"\n', "role 'root'"),
    ('[[token]]\nname = "a"\ntoken = "0123456789abcdef"\nnamespaces = ["x"]\nnamespace = "y"\n', "unknown key"),
    ('[[token]]\ntoken = "0123456789abcdef"\nnamespaces = ["x"]\n', "`name`"),
    ('', "no [[token]] entries"),
    ('[[token]\n', "cannot be read"),
])
def test_a_bad_token_file_is_one_clear_error(tmp_path, body, message):
    path = tmp_path / "tokens.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        TokenTable.load(path)


def test_a_missing_token_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="tokens add"):
        TokenTable.load(tmp_path / "none.toml")
