"""SKILL.md parsing, rendering and validation."""
from __future__ import annotations

import pytest

from metaclaw_mcp.config import CATEGORIES
from metaclaw_mcp.errors import InvalidInput
from metaclaw_mcp.skills.skillmd import (SkillDoc, parse_skill_md, read_skill_folder, render_skill_md, starter_dir,
                                         validate_doc)

GOOD = """---
name: check-the-units
description: "Use when numbers carry units: convert before comparing."
metadata:
  category: data_analysis
  author: someone
---
# Check the units

1. Read the units.
2. Convert them.
"""


def test_parse_good():
    doc = parse_skill_md(GOOD)
    assert doc.name == "check-the-units"
    assert doc.description == "Use when numbers carry units: convert before comparing."
    assert doc.category == "data_analysis"
    assert doc.metadata == {"author": "someone"}
    assert doc.body == "# Check the units\n\n1. Read the units.\n2. Convert them.\n"


def test_parse_top_level_category_and_default():
    text = "---\nname: a-b\ndescription: Use when x.\ncategory: writing\n---\nbody\n"
    assert parse_skill_md(text).category == "writing"
    text = "---\nname: a-b\ndescription: Use when x.\n---\nbody\n"
    assert parse_skill_md(text).category == "general"


def test_parse_crlf_and_bom():
    text = "\ufeff" + GOOD.replace("\n", "\r\n")
    doc = parse_skill_md(text)
    assert doc.name == "check-the-units" and doc.category == "data_analysis"
    assert "Convert them." in doc.body


def test_render_parse_round_trip():
    doc = SkillDoc(name="round-trip", description="Use when: quoting \"things\" & colons: matter.",
                   body="# Title\n\n1. Step one: `code --flag`\n2. Ünïcödé step\n\n**Anti-pattern:** none",
                   category="writing", metadata={"author": "me", "tags": ["a", "b"]})
    text = render_skill_md(doc)
    assert text.startswith("---\nname: round-trip\n")
    back = parse_skill_md(text)
    assert back.body == doc.body + "\n"  # the file ends with a newline; validation trims it
    assert validate_doc(back, 8000) == doc
    assert render_skill_md(back) == text


def test_round_trip_of_every_starter_skill():
    folders = sorted(p for p in starter_dir().iterdir() if p.is_dir())
    assert len(folders) >= 30
    for folder in folders:
        doc = validate_doc(read_skill_folder(folder), 8000, where=str(folder))
        assert doc.name == folder.name
        again = validate_doc(parse_skill_md(render_skill_md(doc)), 8000)
        assert (again.name, again.description, again.body, again.category) == (
            doc.name, doc.description, doc.body, doc.category)


@pytest.mark.parametrize("text, fragment", [
    ("name: x\ndescription: y\n\nbody", "no YAML front matter"),
    ("", "no YAML front matter"),
    ("---\nname: x\ndescription: y\nbody without closing fence\n", "no YAML front matter"),
    ("---\nname: [unclosed\n---\nbody\n", "not valid YAML"),
    ("---\nname: a\n  bad: indent\n---\nbody\n", "not valid YAML"),
    ("---\n- just\n- a list\n---\nbody\n", "must be a mapping"),
    ("---\njust a string\n---\nbody\n", "must be a mapping"),
    ("---\nname: a\ndescription: b\nmetadata: [1, 2]\n---\nbody\n", "'metadata' must be a mapping"),
])
def test_malformed_front_matter_names_the_path(tmp_path, text, fragment):
    path = tmp_path / "some-skill" / "SKILL.md"
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInput) as exc:
        read_skill_folder(path.parent)
    msg = str(exc.value)
    assert str(path) in msg
    assert fragment in msg
    assert "\n" not in msg  # one line, even for YAML errors


def test_unreadable_file_names_the_path(tmp_path):
    path = tmp_path / "bin" / "SKILL.md"
    path.parent.mkdir()
    path.write_bytes(b"---\nname: \xff\xfe\n---\n")
    with pytest.raises(InvalidInput, match="cannot read") as exc:
        read_skill_folder(path)
    assert str(path) in str(exc.value)


def doc(**kw) -> SkillDoc:
    base = dict(name="good-name", description="Use when testing.", body="1. Step.", category="general")
    return SkillDoc(**(base | kw))


def test_validate_trims_whitespace():
    d = validate_doc(doc(description="  Use when x.  \n", body="\n\n  1. Step.  \n\n"), 100)
    assert d.description == "Use when x." and d.body == "1. Step."


@pytest.mark.parametrize("name", ["a", "a1", "abc-def", "x" * 64, "0-1-2"])
def test_valid_names(name):
    assert validate_doc(doc(name=name), 100).name == name


@pytest.mark.parametrize("name", ["", "Abc", "a_b", "a--b", "-a", "a-", "a b", "a.b", "x" * 65, None, 12, "ü"])
def test_invalid_names(name):
    with pytest.raises(InvalidInput, match="name") as exc:
        validate_doc(doc(name=name), 100, where="here")
    assert str(exc.value).startswith("here:")


def test_description_limits():
    assert validate_doc(doc(description="d" * 1024), 100).description == "d" * 1024
    with pytest.raises(InvalidInput, match="1025 chars; at most 1024"):
        validate_doc(doc(description="d" * 1025), 100)
    for missing in ("", "   ", None):
        with pytest.raises(InvalidInput, match="description is missing"):
            validate_doc(doc(description=missing), 100)


def test_body_limits():
    assert validate_doc(doc(body="b" * 300), 300).body == "b" * 300
    with pytest.raises(InvalidInput, match="301 chars; at most 300"):
        validate_doc(doc(body="b" * 301), 300)
    for empty in ("", " \n\t", None):
        with pytest.raises(InvalidInput, match="body is empty"):
            validate_doc(doc(body=empty), 300)


def test_category():
    for category in CATEGORIES:
        assert validate_doc(doc(category=category), 100).category == category
    # free-form labels (agentskills.io metadata), normalised
    assert validate_doc(doc(category="  Cooking "), 100).category == "cooking"
    assert validate_doc(doc(category="x" * 80), 100).category == "x" * 64
    assert validate_doc(doc(category="   "), 100).category == "general"
    for bad in ("two\nlines", "tab\tbed", 7, ["coding"]):
        with pytest.raises(InvalidInput, match="category") as exc:
            validate_doc(doc(category=bad), 100, where="here")
        assert str(exc.value).startswith("here:")


def test_parse_free_form_category():
    text = "---\nname: a-b\ndescription: Use when x.\nmetadata:\n  category: Tools\n---\nbody\n"
    assert validate_doc(parse_skill_md(text), 100).category == "tools"
    text = "---\nname: a-b\ndescription: Use when x.\nmetadata:\n  category: [a, b]\n---\nbody\n"
    with pytest.raises(InvalidInput, match="category must be a string"):
        validate_doc(parse_skill_md(text), 100)


@pytest.mark.anyio
async def test_free_form_category_is_imported_and_filtered(app, tmp_path):
    from pydantic import TypeAdapter

    from metaclaw_mcp.models import Category

    (tmp_path / "k" / "SKILL.md").parent.mkdir()
    (tmp_path / "k" / "SKILL.md").write_text(
        "---\nname: kubectl-rollouts\ndescription: Use when rolling out a kubectl deployment.\n"
        "metadata:\n  category: Tools\n---\n1. Run kubectl rollout status before moving on.\n", encoding="utf-8")
    report = await app.library.import_folder(tmp_path, namespace="ff")
    assert report.imported == ["kubectl-rollouts"] and report.skipped == []
    wanted = TypeAdapter(list[Category]).validate_python([" TOOLS "])  # the fetch_skills argument's type
    assert wanted == ["tools"]
    fetched = await app.fetch_skills("roll out the kubectl deployment", namespace="ff", categories=wanted)
    assert [(s.slug, s.category) for s in fetched.skills] == [("kubectl-rollouts", "tools")]
    other = await app.fetch_skills("roll out the kubectl deployment", namespace="ff", categories=["coding"])
    assert other.skills == []
