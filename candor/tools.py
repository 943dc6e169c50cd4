"""Client-side help for the labelling tools' layouts (candor.formats.IMPORT_FORMATS): a folder
zipped for the imports route, and the class list a new dataset needs, read from the export itself
(FiftyOne's class folders or labels.json `classes`, Argilla's label question)."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from candor.errors import InvalidSource
from candor.formats import IMPORT_FORMATS

UNLABELED = "_unlabeled"


def check_format(fmt: str) -> None:
    if fmt not in IMPORT_FORMATS:
        raise ValueError(f"unknown import format {fmt}; one of {', '.join(IMPORT_FORMATS)}")


def zip_folder(folder: Path) -> Path:
    """The folder's files (hidden ones too: Argilla's .argilla/) in a temporary ZIP; the caller
    deletes it."""
    fd, name = tempfile.mkstemp(suffix=".zip")
    os.close(fd)
    with zipfile.ZipFile(name, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return Path(name)


def _listing(path: Path) -> tuple[list[str], Callable[[str], bytes]]:
    if path.is_dir():
        names = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if p.is_file()]
        return names, lambda n: (path / n).read_bytes()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]

        def read(n: str) -> bytes:
            with zipfile.ZipFile(path) as z:
                return z.read(n)

        return names, read
    raise InvalidSource(f"{path}: not a folder or a ZIP file")


def _strip(names: list[str], depth: int) -> tuple[str, list[str]]:
    tops = {PurePosixPath(n).parts[0] for n in names}
    if len(tops) == 1 and all(len(PurePosixPath(n).parts) > depth for n in names):
        top = tops.pop()
        return top + "/", [n[len(top) + 1 :] for n in names]
    return "", names


def _json(read: Callable[[str], bytes], name: str, source: Path) -> object:
    try:
        return json.loads(read(name))
    except (ValueError, OSError) as exc:
        raise InvalidSource(f"{source}: {name} cannot be read as JSON") from exc


def import_classes(path: Path, fmt: str) -> list[str]:
    """The classes an export of ``fmt`` names (for a new dataset), or InvalidSource."""
    check_format(fmt)
    names, read = _listing(path)
    names = [n for n in names if not n.startswith("__MACOSX/")]
    if fmt == "fiftyone-tree":
        _, rel = _strip([n for n in names if not PurePosixPath(n).name.startswith(".")], 2)
        classes = sorted({n.split("/", 1)[0] for n in rel if "/" in n} - {UNLABELED})
        classes = [c for c in classes if not c.startswith(".")]
    elif fmt == "fiftyone":
        prefix, rel = _strip(names, 1)
        if "labels.json" not in rel:
            raise InvalidSource(f"{path}: no labels.json")
        doc = _json(read, prefix + "labels.json", path)
        classes = doc.get("classes") if isinstance(doc, dict) else None
        if not classes:
            labels = doc.get("labels", {}) if isinstance(doc, dict) else {}
            found: set[str] = set()
            for target in labels.values():
                for t in target if isinstance(target, list) else [target]:
                    label = t.get("label") if isinstance(t, dict) else t
                    if isinstance(label, str):
                        found.add(label)
            classes = sorted(found)
    elif fmt == "argilla":
        prefix, rel = _strip(names, 1)
        classes = []
        if ".argilla/settings.json" in rel:
            doc = _json(read, prefix + ".argilla/settings.json", path)
            for q in doc.get("questions", []) if isinstance(doc, dict) else []:
                settings = q.get("settings", {}) if isinstance(q, dict) else {}
                if settings.get("type") in ("label_selection", "multi_label_selection"):
                    classes = [o["value"] for o in settings.get("options", []) if isinstance(o, dict)]
                    break
        if not classes and "records.json" in rel:
            records = _json(read, prefix + "records.json", path)
            found = set()
            for rec in records if isinstance(records, list) else []:
                for answers in (rec.get("responses") or {}).values() if isinstance(rec, dict) else []:
                    for a in answers or []:
                        value = a.get("value") if isinstance(a, dict) else None
                        found.update(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
            classes = sorted(found)
    else:
        raise InvalidSource(f"{path}: give --classes for the {fmt} layout")
    if len(classes) < 2:
        raise InvalidSource(f"{path}: the {fmt} export names {len(classes)} classes; give --classes")
    return list(classes)
