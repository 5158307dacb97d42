"""SKILL.md folders in the agentskills.io format: YAML front matter, then a markdown body.

    ---
    name: write-unit-tests          # lowercase letters, digits, hyphens; <= 64 chars
    description: Use when ...       # <= 1024 chars
    metadata:
      category: coding              # a free-form label; config.CATEGORIES are the suggested ones
    ---
    # Title
    steps ...

Reading and writing folders of them never follows a symbolic link below the folder named (a
planted link could point anywhere: an import would read another folder's file, an export
would write into one), and each SKILL.md is written whole (a temporary file, then a rename).
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import stat
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
    """A SkillDoc as SKILL.md text: YAML front matter (name, description, metadata with the category),
    then the body; what `parse_skill_md` reads back."""
    meta = {"name": doc.name, "description": doc.description,
            "metadata": {"category": doc.category, **doc.metadata}}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100).strip()
    return f"---\n{front}\n---\n{doc.body.strip()}\n"


# Far above any SKILL.md that validates (the body limit is in characters); stops a planted huge file early.
MAX_SKILL_MD_BYTES = 1 << 20
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# Opening relative to a folder's descriptor, component by component, is what makes "no link
# followed" hold even for a link swapped in after the walk; without it (Windows) links are
# checked for first.
BY_DESCRIPTOR = os.open in os.supports_dir_fd and NOFOLLOW != 0
LINK_ERRNOS = {errno.ELOOP, getattr(errno, "EMLINK", errno.ELOOP)}
NOT_FOLLOWED = "a symbolic link; not followed"


def read_skill_folder(folder: Path, *, within: Path | None = None) -> SkillDoc:
    """Parse `folder/SKILL.md` (or the file `folder`). With `within` (a folder above it), no
    symbolic link between `within` and the file is followed: InvalidInput instead, as for a file
    that cannot be read, is not a regular file, or exceeds MAX_SKILL_MD_BYTES."""
    path = folder / "SKILL.md" if folder.is_dir() else folder
    try:
        data = _read_beneath(Path(within), path) if within is not None else path.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        if exc.errno in LINK_ERRNOS:
            raise InvalidInput(f"{path}: {NOT_FOLLOWED}") from None
        raise InvalidInput(f"{path}: cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: cannot read: {exc}") from None
    return parse_skill_md(text, where=str(path))


def _read_beneath(root: Path, path: Path) -> bytes:
    parts = path.relative_to(root).parts
    if not BY_DESCRIPTOR:
        for i in range(1, len(parts) + 1):
            if root.joinpath(*parts[:i]).is_symlink():
                raise OSError(errno.ELOOP, NOT_FOLLOWED)
        if path.stat().st_size > MAX_SKILL_MD_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_SKILL_MD_BYTES} bytes")
        return path.read_bytes()
    fd = os.open(root, os.O_RDONLY | DIRECTORY)  # the folder the caller named may itself be a link
    try:
        for part in parts[:-1]:
            inner = _open_dir_nofollow(part, fd)
            os.close(fd)
            fd = inner
        # O_NONBLOCK: a FIFO named SKILL.md is refused below instead of blocking the open
        inner = os.open(parts[-1], os.O_RDONLY | NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=fd)
        os.close(fd)
        fd = inner
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > MAX_SKILL_MD_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_SKILL_MD_BYTES} bytes")
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read(MAX_SKILL_MD_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)


def _open_dir_nofollow(name: str, dir_fd: int) -> int:
    """Open folder `name` in `dir_fd`; OSError(ELOOP) when it is a symbolic link."""
    try:
        return os.open(name, os.O_RDONLY | DIRECTORY | NOFOLLOW, dir_fd=dir_fd)
    except NotADirectoryError:  # what Linux says of a link opened with O_DIRECTORY | O_NOFOLLOW
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, NOT_FOLLOWED) from None
        raise


def find_skill_files(root: Path) -> tuple[list[Path], list[Path]]:
    """The SKILL.md files under folder `root`, and the symbolic links below it that were not
    followed (links named SKILL.md and links to folders); both sorted. `root` itself may be a link."""
    files: list[Path] = []
    links: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        links += [here / d for d in dirnames if (here / d).is_symlink()]
        for name in filenames:
            if name == "SKILL.md":
                (links if (here / name).is_symlink() else files).append(here / name)
    return sorted(files), sorted(links)


def write_skill_folders(root: Path, docs: list[SkillDoc], force: bool = False) -> list[Path]:
    """Write each doc to `root/<name>/SKILL.md`; returns those paths.

    Conflict, before anything is written, when `root` is not a folder, is not empty and `force`
    is false, or (with `force`) a `<name>` in it is a symbolic link or not a folder. Each file
    is written whole: a temporary file in its folder, then renamed over SKILL.md (which replaces
    a link of that name rather than writing through it)."""
    from ..errors import Conflict
    if root.exists() or root.is_symlink():
        if not root.is_dir():
            raise Conflict(f"{root} is not a folder; export writes <slug>/SKILL.md folders into a folder")
        if not force and any(root.iterdir()):
            raise Conflict(f"{root} is not empty; export into a new or empty folder, or pass force "
                           f"(`skills export --force`) to overwrite the SKILL.md files in it")
        for doc in docs:
            target = root / doc.name
            if target.is_symlink():
                raise Conflict(f"{target} is a symbolic link; export does not write through one (nothing was written)")
            if target.exists() and not target.is_dir():
                raise Conflict(f"{target} is not a folder; nothing was written")
    root.mkdir(parents=True, exist_ok=True)
    written = []
    root_fd = os.open(root, os.O_RDONLY | DIRECTORY) if BY_DESCRIPTOR else -1
    try:
        for doc in docs:
            _write_skill_md(root, root_fd, doc.name, render_skill_md(doc))
            written.append(root / doc.name / "SKILL.md")
    finally:
        if root_fd >= 0:
            os.close(root_fd)
    return written


def _write_skill_md(root: Path, root_fd: int, name: str, text: str) -> None:
    from ..errors import Conflict
    tmp = f".SKILL.md.{secrets.token_hex(6)}.tmp"
    if root_fd < 0:  # no descriptors to work from: check, then write by path
        folder = root / name
        if folder.is_symlink():
            raise Conflict(f"{folder} is a symbolic link; export does not write through one")
        folder.mkdir(exist_ok=True)
        with open(folder / tmp, "x", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(folder / tmp, folder / "SKILL.md")
        return
    try:
        os.mkdir(name, dir_fd=root_fd)
    except FileExistsError:
        pass
    try:
        dir_fd = _open_dir_nofollow(name, root_fd)
    except OSError as exc:
        if exc.errno in LINK_ERRNOS:
            raise Conflict(f"{root / name} is a symbolic link; export does not write through one") from None
        if exc.errno == errno.ENOTDIR:
            raise Conflict(f"{root / name} is not a folder") from None
        raise
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            os.replace(tmp, "SKILL.md", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
    finally:
        os.close(dir_fd)


def starter_dir() -> Path:
    """The folder of SKILL.md folders shipped with the package, which `SkillLibrary.seed_starter` loads."""
    return Path(__file__).parent / "starter"
