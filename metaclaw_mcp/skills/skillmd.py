"""SKILL.md folders in the agentskills.io format: YAML front matter, then a markdown body.

    ---
    name: write-unit-tests          # lowercase letters, digits, hyphens; <= 64 chars
    description: Use when ...       # <= 1024 chars
    metadata:
      category: coding              # a free-form label; config.CATEGORIES are the suggested ones
    ---
    # Title
    steps ...
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidInput
from ..models import SLUG_RE, normalise_category

# libyaml's loader when PyYAML was built with it: an import of 10k skills spends most of its time here.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", re.S)


@dataclass
class SkillDoc:
    """A skill as text: what a SKILL.md holds."""
    name: str
    description: str
    body: str
    category: str = "general"
    metadata: dict[str, Any] = field(default_factory=dict)


def validate_doc(doc: SkillDoc, max_body_chars: int, where: str = "skill") -> SkillDoc:
    """Raise InvalidInput naming the first problem; return the doc with whitespace trimmed."""
    if not isinstance(doc.name, str) or not SLUG_RE.match(doc.name) or len(doc.name) > 64:
        raise InvalidInput(f"{where}: name {doc.name!r} must be 1-64 lowercase letters, digits and single hyphens")
    if not isinstance(doc.description, str) or not doc.description.strip():
        raise InvalidInput(f"{where}: description is missing")
    if len(doc.description) > 1024:
        raise InvalidInput(f"{where}: description has {len(doc.description)} chars; at most 1024")
    if not isinstance(doc.body, str) or not doc.body.strip():
        raise InvalidInput(f"{where}: body is empty")
    if len(doc.body) > max_body_chars:
        raise InvalidInput(f"{where}: body has {len(doc.body)} chars; at most {max_body_chars}")
    try:
        doc.category = normalise_category(doc.category)  # free-form label; CATEGORIES is only the suggested set
    except ValueError as exc:
        raise InvalidInput(f"{where}: {exc}") from None
    doc.description = doc.description.strip()
    doc.body = doc.body.strip()
    return doc


def parse_skill_md(text: str, where: str = "SKILL.md") -> SkillDoc:
    """Parse SKILL.md text; raise InvalidInput (with `where`) when it is malformed."""
    m = FRONT_MATTER.match(text.lstrip("\ufeff"))
    if not m:
        raise InvalidInput(f"{where}: no YAML front matter (the file must start with '---')")
    try:
        meta = yaml.load(m.group(1), Loader=SAFE_LOADER) or {}
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{where}: front matter is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(meta, dict):
        raise InvalidInput(f"{where}: front matter must be a mapping of keys to values")
    extra = meta.get("metadata") or {}
    if not isinstance(extra, dict):
        raise InvalidInput(f"{where}: 'metadata' must be a mapping")
    category = next((c for c in (extra.get("category"), meta.get("category")) if c is not None), "general")
    return SkillDoc(name=meta.get("name"), description=meta.get("description"), body=m.group(2),
                    category=category, metadata={k: v for k, v in extra.items() if k != "category"})


def render_skill_md(doc: SkillDoc) -> str:
    meta = {"name": doc.name, "description": doc.description,
            "metadata": {"category": doc.category, **doc.metadata}}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100).strip()
    return f"---\n{front}\n---\n{doc.body.strip()}\n"


def read_skill_folder(folder: Path) -> SkillDoc:
    path = folder / "SKILL.md" if folder.is_dir() else folder
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read: {exc}") from None
    return parse_skill_md(text, where=str(path))


def starter_dir() -> Path:
    return Path(__file__).parent / "starter"
