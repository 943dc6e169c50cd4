"""What the tool readers share: the archive's files, an optional wrapping folder, bounded reads."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import PurePosixPath

from app.core.problems import Problem
from app.core.settings import get_settings
from app.datasets.service import ZIP_ERRORS, zip_damage
from app.ml.data import InputError
from app.ml.text import show

SKIPPED = ("__MACOSX",)


def files(zf: zipfile.ZipFile) -> list[str]:
    """The archive's files, without folders, hidden files and macOS resource forks."""
    out = []
    for name in zf.namelist():
        if name.endswith("/"):
            continue
        parts = PurePosixPath(name).parts
        if not parts or parts[0] in SKIPPED or any(p.startswith(".") for p in parts):
            continue
        out.append(name)
    return out


def strip_root(names: list[str], keep: Callable[[str], bool], depth: int = 2) -> tuple[str, dict[str, str]]:
    """(prefix, {path without the prefix: member name}): when every file lies at least ``depth``
    folders deep in one top folder for which ``keep(folder)`` is false (a zipped export folder),
    that folder is dropped."""
    tops = {PurePosixPath(n).parts[0] for n in names}
    if len(tops) == 1 and all(len(PurePosixPath(n).parts) > depth for n in names):
        top = tops.pop()
        if not keep(top):
            return top + "/", {n[len(top) + 1 :]: n for n in names}
    return "", {n: n for n in names}


def read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """An image member's bytes (at most one byte over the image limit), or InputError naming it."""
    limit = get_settings().max_image_bytes
    try:
        with zf.open(name) as fh:
            return fh.read(limit + 1)
    except ZIP_ERRORS as exc:
        raise InputError(f"ZIP member {show(name, 200)} cannot be read: {zip_damage(exc)}") from exc


def reader_of(zf: zipfile.ZipFile, name: str) -> Callable[[], bytes]:
    return lambda: read_member(zf, name)


def read_json(zf: zipfile.ZipFile, name: str, limit: int | None = None) -> object:
    """A JSON member parsed, or 422 naming the file and what is wrong with it."""
    limit = limit or get_settings().max_json_bytes
    try:
        info = zf.getinfo(name)
        if info.file_size > limit:
            raise Problem(422, "Upload rejected", f"{show(name, 200)} is {info.file_size} bytes; the limit is {limit}")
        with zf.open(name) as fh:
            raw = fh.read(limit + 1)
    except ZIP_ERRORS as exc:
        raise Problem(422, "Upload rejected", f"{show(name, 200)} cannot be read: {zip_damage(exc)}") from exc
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Problem(422, "Upload rejected", f"{show(name, 200)} is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise Problem(
            422, "Upload rejected", f"{show(name, 200)} is not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from exc
    except RecursionError as exc:
        raise Problem(422, "Upload rejected", f"{show(name, 200)}: JSON nested too deeply") from exc
