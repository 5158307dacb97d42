"""SKILL.md folders and JSONL files on disk: export into real folders, import from them, planted links."""
from __future__ import annotations

import os
import sys

import pytest

from metaclaw_mcp.errors import Conflict, InvalidInput
from metaclaw_mcp.skills.library import SkillLibrary
from metaclaw_mcp.skills.skillmd import SkillDoc, read_skill_folder, render_skill_md
from metaclaw_mcp.store import Database

pytestmark = [pytest.mark.anyio,
              pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")]


@pytest.fixture
async def library(tmp_path):
    async with Database(tmp_path / "metaclaw.db") as db:
        library = SkillLibrary(db)
        for name in ("alpha-skill", "beta-skill"):
            await library.add(SkillDoc(name, f"Use when {name} applies.", f"1. Do the {name} step."))
        yield library


def write_skill(path, name: str, body: str = "1. A step.") -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "SKILL.md").write_text(render_skill_md(SkillDoc(name, f"Use when {name} applies.", body)),
                                   encoding="utf-8")


async def test_export_into_a_non_empty_folder_needs_force(library, tmp_path):
    out = tmp_path / "out"
    assert len(await library.export_folder(out)) == 2
    edited = out / "alpha-skill" / "SKILL.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\nmy own note\n", encoding="utf-8")
    with pytest.raises(Conflict, match=r"is not empty; .*--force"):
        await library.export_folder(out)
    assert edited.read_text(encoding="utf-8").endswith("my own note\n")  # the user's edit is kept
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    await library.export_folder(out, force=True)
    assert "my own note" not in edited.read_text(encoding="utf-8")
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"   # only the skills' files are replaced
    assert sorted(p.name for p in out.iterdir()) == ["alpha-skill", "beta-skill", "notes.txt"]
    assert [p.name for p in (out / "alpha-skill").iterdir()] == ["SKILL.md"]  # no temporary file left behind


async def test_export_replaces_each_file_whole_never_rewrites_it_in_place(library, tmp_path):
    out = tmp_path / "out"
    await library.export_folder(out)
    target = out / "beta-skill" / "SKILL.md"
    old = target.read_text(encoding="utf-8")
    os.link(target, tmp_path / "old-copy")  # a second name for the file as it was
    await library.revise("default", "beta-skill", SkillDoc("beta-skill", "Use when beta changed.", "1. New."))
    await library.export_folder(out, force=True)
    assert read_skill_folder(out / "beta-skill").description == "Use when beta changed."
    assert (tmp_path / "old-copy").read_text(encoding="utf-8") == old  # a new file was renamed into place


async def test_export_never_writes_through_a_planted_link(library, tmp_path):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "beta-skill").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(Conflict, match="beta-skill is a symbolic link; export does not write through one"):
        await library.export_folder(out, force=True)
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["beta-skill"]  # refused before writing anything

    # a link named SKILL.md is replaced by the exported file; what it pointed at is untouched
    (out / "beta-skill").unlink()
    (out / "alpha-skill").mkdir()
    (elsewhere / "precious.md").write_text("keep me", encoding="utf-8")
    (out / "alpha-skill" / "SKILL.md").symlink_to(elsewhere / "precious.md")
    await library.export_folder(out, force=True)
    assert (elsewhere / "precious.md").read_text(encoding="utf-8") == "keep me"
    assert not (out / "alpha-skill" / "SKILL.md").is_symlink()
    assert read_skill_folder(out / "alpha-skill").name == "alpha-skill"


async def test_jsonl_export_needs_force_to_replace_and_never_writes_through_a_link(library, tmp_path):
    path = tmp_path / "skills.jsonl"
    path.write_text("my own lines\n", encoding="utf-8")
    with pytest.raises(Conflict, match="already exists; pass force"):
        await library.export_jsonl(path)
    assert path.read_text(encoding="utf-8") == "my own lines\n"
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me", encoding="utf-8")
    path.unlink()
    path.symlink_to(precious)
    assert await library.export_jsonl(path, force=True) == 2
    assert precious.read_text(encoding="utf-8") == "keep me"
    assert not path.is_symlink() and len(path.read_text(encoding="utf-8").splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


async def test_import_never_follows_a_link_below_the_folder(library, tmp_path):
    root, outside = tmp_path / "incoming", tmp_path / "outside"
    write_skill(root / "good", "good-skill")
    write_skill(outside / "secret", "secret-skill", "1. The secret file's text.")
    write_skill(outside / "other", "other-skill")
    (root / "linked-file").mkdir()
    (root / "linked-file" / "SKILL.md").symlink_to(outside / "secret" / "SKILL.md")
    (root / "linked-dir").symlink_to(outside / "other", target_is_directory=True)
    report = await library.import_folder(root, namespace="imp")
    assert report.imported == ["good-skill"]
    assert dict(report.skipped) == {str(root / "linked-dir"): "a symbolic link; not followed",
                                    str(root / "linked-file" / "SKILL.md"): "a symbolic link; not followed"}
    assert [s.slug for s in await library.list("imp")] == ["good-skill"]

    # the folder named may itself be a link (the user chose it); the links below it are still skipped
    (tmp_path / "via-link").symlink_to(root, target_is_directory=True)
    again = await library.import_folder(tmp_path / "via-link", namespace="imp2")
    assert again.imported == ["good-skill"] and len(again.skipped) == 2
    # a link swapped in after the walk: reading below the folder refuses it too
    with pytest.raises(InvalidInput, match="a symbolic link; not followed"):
        read_skill_folder(root / "linked-dir" / "SKILL.md", within=root)


async def test_import_skips_a_huge_file_without_reading_it_whole(library, tmp_path):
    root = tmp_path / "incoming"
    write_skill(root / "huge", "huge-skill", "x" * (2 << 20))
    write_skill(root / "small", "small-skill")
    report = await library.import_folder(root, namespace="big")
    assert report.imported == ["small-skill"]
    [(where, why)] = report.skipped
    assert where == str(root / "huge" / "SKILL.md") and "larger than 1048576 bytes" in why
