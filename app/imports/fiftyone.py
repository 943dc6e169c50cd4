"""FiftyOne's image classification layouts, read as candidate sets.

``fiftyone-tree``: ``ImageClassificationDirectoryTree``, ``CLASS/.../image.ext``. An image filed
under several class folders (the same bytes, under any names) is one item whose candidate set is
those folders, in path order. Its id is its file name without extension (the first of its paths);
where different images share a name, each takes its first path without extension instead
(``cat/001``, ``dog/001``). ``_unlabeled/`` (FiftyOne's folder for images without a label) is
refused: every item needs a candidate set.

``fiftyone``: ``FiftyOneImageClassificationDataset``, ``data/`` + ``labels.json`` holding
``{"classes": [...] | null, "labels": {key: target}}``; a key is the image's path under ``data/``
without extension (its id), a target a class index into ``classes``, a class name, an object
``{"label": ...}`` or a list of those: a list is the candidate set. Images without a label are
not imported (as FiftyOne's importer does by default).

Either may sit in one top folder of the ZIP (a zipped export folder).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Sequence
from pathlib import PurePosixPath

from app.core.problems import Problem
from app.core.settings import get_settings
from app.datasets.service import ZIP_ERRORS, Incoming, zip_damage
from app.imports.zipfiles import files, read_json, reader_of, strip_root
from app.ml.text import show

UNLABELED = "_unlabeled"
HASH_CHUNK = 1 << 20


def _sha(zf: zipfile.ZipFile, name: str) -> str:
    """The member's content hash, read at most one byte past the image limit (a larger member is
    rejected by ingest anyway; a compressed bomb is never inflated whole)."""
    digest = hashlib.sha256()
    left = get_settings().max_image_bytes + 1
    try:
        with zf.open(name) as fh:
            while left > 0:
                chunk = fh.read(min(HASH_CHUNK, left))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
    except ZIP_ERRORS as exc:
        raise Problem(
            422, "Upload rejected", f"ZIP member {show(name, 200)} cannot be read: {zip_damage(exc)}"
        ) from exc
    return digest.hexdigest()


def _rejected(detail: str) -> Problem:
    return Problem(422, "Upload rejected", detail)


def read_tree(zf: zipfile.ZipFile, classes: Sequence[str]) -> list[Incoming]:
    """Items of an ImageClassificationDirectoryTree ZIP (see the module's description)."""
    known = set(classes) | {UNLABELED}
    _, paths = strip_root(files(zf), lambda top: top in known, depth=2)
    # (class folder, path within it) for files inside a class folder; FiftyOne skips loose files
    filed = sorted((p.split("/", 1)[0], p.split("/", 1)[1], m) for p, m in paths.items() if "/" in p)
    if not filed:
        raise _rejected("the ZIP holds no class folders (CLASS/image.ext)")
    groups: dict[str, list[tuple[str, str, str]]] = {}  # content hash -> [(class, rel, member)]
    for cls, rel, member in filed:
        groups.setdefault(_sha(zf, member), []).append((cls, rel, member))
    named: dict[str, list[str]] = {}
    for sha, members in groups.items():
        named.setdefault(PurePosixPath(members[0][1]).with_suffix("").as_posix(), []).append(sha)
    ordered = sorted(groups.values(), key=lambda ms: (ms[0][1], ms[0][0]))
    out: list[Incoming] = []
    for members in ordered:
        cls0, rel0, member0 = members[0]
        stem = PurePosixPath(rel0).with_suffix("").as_posix()
        item_id = stem if len(named[stem]) == 1 else f"{cls0}/{stem}"
        cands = list(dict.fromkeys(c for c, _, _ in members if c != UNLABELED))
        if not cands:
            raise _rejected(
                f"image {show(members[0][2], 200)} (id {show(item_id)}) is only in {UNLABELED}/: "
                "file it under at least one class folder"
            )
        out.append(Incoming(index=len(out), id=item_id, candidates=cands, read=reader_of(zf, member0)))
    return out


def _target_labels(key: str, target: object, classes: list | None) -> list[str]:
    """The class names a labels.json target names, or 422 naming the key."""
    many = isinstance(target, list)
    out = []
    for t in target if many else [target]:
        label = t.get("label") if isinstance(t, dict) else t
        if isinstance(label, bool) or label is None:
            raise _rejected(f"labels.json: label of {show(key, 200)} is {show(label)}, not a class index or name")
        if isinstance(label, int):
            if classes is None:
                label = str(label)
            elif not 0 <= label < len(classes):
                raise _rejected(
                    f"labels.json: label of {show(key, 200)} is class index {label}; "
                    f"'classes' has {len(classes)} entries"
                )
            else:
                label = classes[label]
        if not isinstance(label, str):
            raise _rejected(f"labels.json: label of {show(key, 200)} is {show(label)}, not a class index or name")
        out.append(label)
    if not out:
        raise _rejected(f"labels.json: {show(key, 200)} has an empty list of labels")
    return out


def read_labels_json(zf: zipfile.ZipFile, classes: Sequence[str]) -> list[Incoming]:
    """Items of a FiftyOneImageClassificationDataset ZIP (see the module's description)."""
    names = files(zf)
    prefix, paths = strip_root(names, lambda top: top in ("data", "labels.json"), depth=1)
    if "labels.json" not in paths:
        raise _rejected("the ZIP holds no labels.json (FiftyOneImageClassificationDataset: data/ + labels.json)")
    doc = read_json(zf, paths["labels.json"])
    if not isinstance(doc, dict) or not isinstance(doc.get("labels"), dict):
        raise _rejected('labels.json must be an object {"classes": [...] or null, "labels": {key: label}}')
    tool_classes = doc.get("classes")
    if tool_classes is not None and (
        not isinstance(tool_classes, list) or not all(isinstance(c, str) for c in tool_classes)
    ):
        raise _rejected("labels.json: 'classes' must be a list of class names or null")
    by_key: dict[str, list[str]] = {}
    for p, member in paths.items():
        if p.startswith("data/"):
            by_key.setdefault(PurePosixPath(p[len("data/") :]).with_suffix("").as_posix(), []).append(member)
    out: list[Incoming] = []
    for key, target in doc["labels"].items():
        if target is None:
            continue
        cands = _target_labels(key, target, tool_classes)
        found = by_key.get(key.replace("\\", "/"), [])
        if len(found) != 1:
            where = f"{prefix}data/{key}.*"
            what = "no image" if not found else f"{len(found)} images ({', '.join(sorted(found)[:3])})"
            raise _rejected(f"labels.json: {show(key, 200)} has {what} at {show(where, 200)}")
        out.append(Incoming(index=len(out), id=key, candidates=cands, read=reader_of(zf, found[0])))
    if not out:
        raise _rejected("labels.json labels no image")
    return out
