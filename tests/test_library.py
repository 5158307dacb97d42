"""The skill library through a real app and SQLite file."""
from __future__ import annotations

import pytest

from metaclaw_mcp.config import CATEGORIES
from metaclaw_mcp.errors import Conflict, InvalidInput, NotFound
from metaclaw_mcp.skills.skillmd import SkillDoc, read_skill_folder, render_skill_md, starter_dir, validate_doc

pytestmark = pytest.mark.anyio


def skill_md(name: str, description: str, body: str, category: str = "general") -> str:
    return render_skill_md(SkillDoc(name=name, description=description, body=body, category=category))


def write_skill(root, folder: str, text: str):
    path = root / folder / "SKILL.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


ZEBRA = SkillDoc(name="zebra-crossing", description="Use when a zebra crossing appears in traffic planning.",
                 body="1. Look for the quagga stripes.\n2. Cross slowly.", category="general")


def zebra() -> SkillDoc:
    """A fresh copy: validation trims the doc it is given."""
    return SkillDoc(**ZEBRA.__dict__)


async def test_starter_skills_load_valid_and_active(app):
    skills = await app.library.list("default")
    folders = sorted(p.name for p in starter_dir().iterdir() if (p / "SKILL.md").is_file())
    assert len(skills) >= 30
    assert sorted(s.slug for s in skills) == folders
    for s in skills:
        assert s.status == "active", s.slug
        assert s.version == 1 and s.source == "starter"
        assert s.category in CATEGORIES
        validate_doc(s.doc(), app.config.max_skill_body_chars, where=s.slug)
        assert s.description.startswith("Use when"), s.slug
    assert await app.library.counts() == {"active": len(folders)}
    assert (await app.db.get_kv("starter_loaded:default"))["count"] == len(folders)


async def test_starter_seed_runs_once(app):
    n = len(await app.library.list("default"))
    await app.library.set_status("default", "write-unit-tests", "retired")
    assert await app.library.seed_starter("default") == 0
    assert len(await app.library.list("default")) == n
    assert (await app.library.get("default", "write-unit-tests")).status == "retired"


async def test_starter_skills_only_in_default_namespace(app):
    assert await app.library.list("other") == []


async def test_no_starters_when_disabled(tmp_path):
    from metaclaw_mcp.app import open_app
    from metaclaw_mcp.config import load_config

    async with open_app(load_config(home=tmp_path / "bare", load_starter_skills=False)) as bare:
        assert await bare.library.list("default") == []


async def test_add_and_get_by_slug_and_id(app):
    added = await app.library.add(zebra(), namespace="ns1")
    assert added.slug == "zebra-crossing" and added.version == 1 and added.status == "active"
    assert added.namespace == "ns1" and added.source == "user"
    by_slug = await app.library.get("ns1", "zebra-crossing")
    by_id = await app.library.get("ns1", added.id)
    by_id_str = await app.library.get("ns1", str(added.id))
    assert by_slug.as_dict() == by_id.as_dict() == by_id_str.as_dict()
    assert by_slug.body == ZEBRA.body and by_slug.description == ZEBRA.description
    with pytest.raises(NotFound, match="zebra-crossing"):
        await app.library.get("default", "zebra-crossing")  # other namespace
    with pytest.raises(NotFound):
        await app.library.get("ns1", 999_999)
    with pytest.raises(NotFound):
        await app.library.get("ns1", "99999999999999999999999")  # larger than any SQLite integer


async def test_add_validates(app):
    with pytest.raises(InvalidInput, match="name"):
        await app.library.add(SkillDoc(name="Bad Name", description="Use when x.", body="1. y"))
    with pytest.raises(InvalidInput, match="category"):
        await app.library.add(SkillDoc(name="ok-name", description="Use when x.", body="1. y", category="no\npe"))
    with pytest.raises(NotFound):
        await app.library.get("default", "ok-name")


async def test_slug_conflict_on_add(app):
    n = len(await app.library.list("default"))
    with pytest.raises(Conflict, match="write-unit-tests"):
        await app.library.add(SkillDoc(name="write-unit-tests", description="Use when something else entirely.",
                                       body="1. Something else."))
    assert len(await app.library.list("default")) == n
    assert (await app.library.get("default", "write-unit-tests")).source == "starter"
    # the same slug is fine in another namespace
    assert (await app.library.add(SkillDoc(name="write-unit-tests", description="Use when x.", body="1. y"),
                                  namespace="other")).namespace == "other"


@pytest.mark.parametrize("query, expected", [
    ("write unit tests for a python function", "write-unit-tests"),
    ("debug a failing test", "debug-failing-test"),
    ("timestamps timezone offset", "iso8601-timestamps"),
    ("git commit message hygiene", "git-commit-hygiene"),
    ("confirm before a destructive action like rm -rf", "confirm-destructive-actions"),
])
async def test_search_ranks_relevant_starter_first(app, query, expected):
    found = await app.library.search(query, "default", k=5)
    assert found, query
    assert found[0].slug == expected, [s.slug for s in found]
    scores = [s.score for s in found]
    assert scores == sorted(scores, reverse=True)
    assert found[0].score > 0


async def test_search_honours_k_and_categories(app):
    query = "write tests debug code data analysis timestamps"
    assert len(await app.library.search(query, k=1)) == 1
    assert len(await app.library.search(query, k=3)) == 3
    coding = await app.library.search(query, k=50, categories=["coding"])
    assert coding and all(s.category == "coding" for s in coding)
    mixed = await app.library.search(query, k=50, categories=["coding", "data_analysis"])
    assert {s.category for s in mixed} == {"coding", "data_analysis"}
    assert await app.library.search(query, k=50, categories=["no-such-category"]) == []


async def test_search_empty_or_stopword_query(app):
    assert await app.library.search("", k=5) == []
    assert await app.library.search("the and of to", k=5) == []
    assert await app.library.search("xylophonequux", k=5) == []


async def test_search_handles_fts_syntax_in_query(app):
    found = await app.library.search('debug "failing" test AND OR NOT NEAR( * : -', k=3)
    assert found[0].slug == "debug-failing-test"


async def test_search_excludes_retired_and_candidate(app):
    await app.library.add(zebra(), status="candidate")
    assert await app.library.search("quagga zebra", k=5) == []
    assert [s.slug for s in await app.library.search("quagga zebra", k=5, statuses=("candidate",))] == ["zebra-crossing"]
    await app.library.set_status("default", "zebra-crossing", "active")
    assert [s.slug for s in await app.library.search("quagga zebra", k=5)] == ["zebra-crossing"]
    retired = await app.library.set_status("default", "zebra-crossing", "retired", reason="obsolete")
    assert retired.status == "retired" and retired.status_reason == "obsolete"
    assert await app.library.search("quagga zebra", k=5) == []
    # a retired starter disappears from its own best query
    await app.library.set_status("default", "debug-failing-test", "retired")
    assert "debug-failing-test" not in [s.slug for s in await app.library.search("debug a failing test", k=10)]


async def test_set_status_rejects_unknown(app):
    with pytest.raises(InvalidInput, match="status"):
        await app.library.set_status("default", "write-unit-tests", "deleted")
    assert (await app.library.get("default", "write-unit-tests")).status == "active"


async def test_search_is_per_namespace(app):
    await app.library.add(zebra(), namespace="zoo")
    assert [s.slug for s in await app.library.search("quagga", "zoo")] == ["zebra-crossing"]
    assert await app.library.search("quagga", "default") == []


async def test_revise_then_rollback(app):
    sk = await app.library.add(zebra())
    v2 = await app.library.revise("default", "zebra-crossing",
                                  SkillDoc(name="ignored", description="Use when pelicans cross the road.",
                                           body="1. Wait for the okapi signal."), provenance=["t-1"])
    assert (v2.id, v2.version, v2.slug) == (sk.id, 2, "zebra-crossing")
    assert v2.provenance == ["t-1"]
    assert [s.slug for s in await app.library.search("okapi pelicans")] == ["zebra-crossing"]
    assert await app.library.search("quagga") == []  # old text no longer matches
    versions = await app.library.versions(sk.id)
    assert [(v.version, v.parent_version) for v in versions] == [(1, None), (2, 1)]
    assert versions[0].body == ZEBRA.body

    back = await app.library.rollback("default", sk.id, 1)
    assert back.version == 1 and back.body == ZEBRA.body and back.description == ZEBRA.description
    assert [s.slug for s in await app.library.search("quagga")] == ["zebra-crossing"]
    assert await app.library.search("okapi pelicans") == []
    assert len(await app.library.versions(sk.id)) == 2  # versions are kept

    # a revision after a rollback is version 3, with parent 1
    v3 = await app.library.revise("default", sk.id, SkillDoc(name="x", description="Use when gnus migrate.",
                                                              body="1. Count the gnus."))
    assert v3.version == 3
    assert (await app.library.versions(sk.id))[-1].parent_version == 1
    # default rollback target: the version before the current one
    assert (await app.library.rollback("default", sk.id)).version == 2


async def test_rollback_errors(app):
    sk = await app.library.add(zebra())
    with pytest.raises(NotFound, match="no version 7"):
        await app.library.rollback("default", sk.id, 7)
    with pytest.raises(NotFound, match="no version 0"):
        await app.library.rollback("default", sk.id)  # at v1 there is nothing before
    with pytest.raises(Conflict, match="already at version 1"):
        await app.library.rollback("default", sk.id, 1)
    with pytest.raises(NotFound):
        await app.library.rollback("default", "no-such-skill", 1)
    assert (await app.library.get("default", sk.id)).version == 1


async def test_revise_validates(app):
    with pytest.raises(InvalidInput, match="body"):
        await app.library.revise("default", "write-unit-tests",
                                 SkillDoc(name="x", description="Use when y.", body="z" * 10_000))
    sk = await app.library.get("default", "write-unit-tests")
    assert sk.version == 1 and len(await app.library.versions(sk.id)) == 1


async def test_import_folder_good_and_bad(app, tmp_path):
    root = tmp_path / "incoming"
    write_skill(root, "alpha-skill", skill_md("alpha-skill", "Use when alpha things happen.", "1. Alpha step."))
    write_skill(root, "beta-skill", skill_md("beta-skill", "Use when beta things happen.", "1. Beta step.", "writing"))
    bad = write_skill(root, "broken", "no front matter at all\n")
    bad_name = write_skill(root, "nested/deeper/bad-name", skill_md("Bad_Name", "Use when.", "1. x"))
    report = await app.library.import_folder(root, namespace="imp")
    assert sorted(report.imported) == ["alpha-skill", "beta-skill"]
    skipped = dict(report.skipped)
    assert set(skipped) == {str(bad), str(bad_name)}
    assert "no YAML front matter" in skipped[str(bad)]
    assert "name" in skipped[str(bad_name)]
    skills = {s.slug: s for s in await app.library.list("imp")}
    assert set(skills) == {"alpha-skill", "beta-skill"}
    assert skills["beta-skill"].category == "writing" and skills["beta-skill"].source == "import"
    assert all(s.status == "active" for s in skills.values())

    # importing again: nothing new, each reported unchanged
    again = await app.library.import_folder(root, namespace="imp")
    assert again.imported == []
    assert sorted(name for name, why in again.skipped if "unchanged" in why) == ["alpha-skill", "beta-skill"]
    assert all(s.version == 1 for s in await app.library.list("imp"))


async def test_import_duplicate_name_in_one_folder(app, tmp_path):
    root = tmp_path / "dups"
    write_skill(root, "a", skill_md("same-name", "Use when first.", "1. First."))
    second = write_skill(root, "b", skill_md("same-name", "Use when second.", "1. Second."))
    report = await app.library.import_folder(root, namespace="d")
    assert report.imported == ["same-name"]
    assert [p for p, _ in report.skipped] == [str(second)]
    assert (await app.library.get("d", "same-name")).description == "Use when first."


async def test_import_changed_skill_adds_version(app, tmp_path):
    root = tmp_path / "v"
    write_skill(root, "s", skill_md("versioned-skill", "Use when v1.", "1. One."))
    await app.library.import_folder(root, namespace="v")
    write_skill(root, "s", skill_md("versioned-skill", "Use when v2.", "1. Two."))
    report = await app.library.import_folder(root, namespace="v")
    assert report.imported == ["versioned-skill"]
    sk = await app.library.get("v", "versioned-skill")
    assert sk.version == 2 and sk.description == "Use when v2."
    # whitespace and case changes are the same text
    write_skill(root, "s", skill_md("versioned-skill", "USE WHEN   v2.", "1.  two."))
    assert (await app.library.import_folder(root, namespace="v")).imported == []


async def test_import_single_file_and_missing_path(app, tmp_path):
    path = write_skill(tmp_path, "one", skill_md("single-file", "Use when one file.", "1. One."))
    assert (await app.library.import_folder(path, namespace="f")).imported == ["single-file"]
    with pytest.raises(NotFound):
        await app.library.import_folder(tmp_path / "does-not-exist", namespace="f")


async def test_export_import_round_trip(app, tmp_path):
    await app.library.add(SkillDoc(name="custom-skill", description="Use when exporting: \"quotes\" survive.",
                                   body="# Custom\n\n1. Keep `code`.\n2. Keep ünïcode.", category="devops"))
    out = tmp_path / "export"
    written = await app.library.export_folder(out, "default")
    source = {s.slug: s for s in await app.library.list("default")}
    assert sorted(p.parent.name for p in written) == sorted(source)
    assert read_skill_folder(out / "custom-skill").category == "devops"

    report = await app.library.import_folder(out, namespace="copy")
    assert sorted(report.imported) == sorted(source) and report.skipped == []
    copied = {s.slug: s for s in await app.library.list("copy")}
    assert set(copied) == set(source)
    for slug, s in source.items():
        c = copied[slug]
        assert (c.description, c.body, c.category) == (s.description, s.body, s.category), slug
        assert c.id != s.id and c.namespace == "copy"


async def test_export_by_status(app, tmp_path):
    await app.library.set_status("default", "write-unit-tests", "retired")
    written = await app.library.export_folder(tmp_path / "retired", "default", status="retired")
    assert [p.parent.name for p in written] == ["write-unit-tests"]
