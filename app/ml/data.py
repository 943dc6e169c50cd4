"""Candidate-label datasets: the manifest format, the class list, and their validation.

A manifest is JSONL, one item a line: ``{"id": "...", "image": "relative/path.png",
"candidates": ["cat", "dog"]}``; image paths are relative to the manifest's folder. A line may give
``annotations`` (``[{"annotator": "a1", "label": "cat"}, ...]``) besides or instead of
``candidates``; a candidate policy (:mod:`app.ml.votes`) derives the set from them. Classes come
from a text file (one name a line; blank lines and lines starting with '#' are skipped) or from a
JSON file holding ``{"classes": [...]}``.

Every problem raises :class:`InputError` with one message naming the item (line and id) and the
problem, before anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from app.ml.features import ImageRef, decode_image, sha256_bytes
from app.ml.text import show, text_problem

if TYPE_CHECKING:
    from app.ml.votes import CandidatePolicy

MAX_CLASS_NAME = 255


class InputError(ValueError):
    """Bad user input: the message names the item and the problem."""


def validate_classes(classes: Sequence[str]) -> list[str]:
    names = [str(c).strip() for c in classes]
    if len(names) < 2:
        raise InputError(f"need at least two classes, got {len(names)}")
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not name:
            raise InputError(f"class {i + 1}: empty class name")
        if len(name) > MAX_CLASS_NAME:
            raise InputError(f"class {i + 1}: name longer than {MAX_CLASS_NAME} characters")
        problem = text_problem(name)
        if problem is not None:
            raise InputError(f"class {i + 1}: the name {problem}")
        if name in seen:
            raise InputError(f"class {i + 1}: duplicate class name {show(name)}")
        seen.add(name)
    return names


def read_classes(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"classes file {show(str(path), 200)} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"classes file {show(str(path), 200)}: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("classes"), list):
            raise InputError(f"classes file {show(str(path), 200)}: expected an object with a 'classes' list")
        return validate_classes(data["classes"])
    lines = [ln.strip() for ln in text.splitlines()]
    return validate_classes([ln for ln in lines if ln and not ln.startswith("#")])


def validate_candidates(item: str, candidates: object, class_index: dict[str, int]) -> list[str]:
    """The item's candidates as a de-duplicated list in first-seen order, or InputError naming the
    item. Linear in the number of candidates."""
    if not isinstance(candidates, list):
        raise InputError(f"{item}: 'candidates' must be a list of class names")
    if not candidates:
        raise InputError(f"{item}: empty candidate set")
    for position, c in enumerate(candidates):
        if not isinstance(c, str):
            raise InputError(f"{item}: candidate {position} is {show(c)}, not a class name")
        if c not in class_index:
            raise InputError(f"{item}: candidate {show(c)} is not among the classes")
    return list(dict.fromkeys(candidates))


@dataclass
class CandidateDataset:
    """Items with candidate label sets over ``classes``."""

    classes: list[str]
    ids: list[str]
    images: list[ImageRef]
    candidates: list[list[str]]
    annotations: list[list[dict] | None] | None = None  # per item, the validated votes (None: none)

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self) -> torch.Tensor:
        index = {c: k for k, c in enumerate(self.classes)}
        m = torch.zeros(len(self.ids), len(self.classes))
        for i, cands in enumerate(self.candidates):
            for c in cands:
                m[i, index[c]] = 1.0
        return m


def _file_loader(path: Path, label: str):
    def load() -> Image.Image:
        return decode_image(path.read_bytes(), label)

    return load


def read_manifest(path: str | Path, classes: Sequence[str], policy: CandidatePolicy | None = None) -> CandidateDataset:
    """Parse and validate a manifest; every image must exist (its bytes are hashed here). Lines
    with ``annotations`` and no ``candidates`` take the set ``policy`` derives (default: the union
    of the annotators' labels, a ground-truth annotation winning)."""
    from app.ml.votes import CandidatePolicy, derive_candidates, validate_annotations

    policy = policy or CandidatePolicy()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {show(str(path), 200)} does not exist")
    classes = validate_classes(classes)
    index = {c: k for k, c in enumerate(classes)}
    root = path.parent
    ids: list[str] = []
    refs: list[ImageRef] = []
    cands: list[list[str]] = []
    anns: list[list[dict] | None] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"manifest line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise InputError(f"{where}: expected a JSON object")
            item_id = row.get("id")
            if not isinstance(item_id, str) or not item_id:
                raise InputError(f"{where}: missing or empty 'id'")
            problem = text_problem(item_id)
            if problem is not None:
                raise InputError(f"{where}: 'id' {problem}")
            where = f"manifest line {lineno} (id {show(item_id)})"
            if item_id in seen:
                raise InputError(f"{where}: duplicate id, first seen on line {seen[item_id]}")
            seen[item_id] = lineno
            image = row.get("image")
            if not isinstance(image, str) or not image:
                raise InputError(f"{where}: missing 'image' path")
            image_path = (root / image).resolve()
            if not image_path.is_file():
                raise InputError(f"{where}: image {show(image, 200)} does not exist")
            try:
                digest = sha256_bytes(image_path.read_bytes())
            except OSError as exc:
                raise InputError(f"{where}: image {show(image, 200)} cannot be read ({exc.strerror})") from exc
            votes = None
            if row.get("annotations") is not None:
                votes = validate_annotations(where, row["annotations"], index)
                if row.get("candidates") is None:
                    cands.append(derive_candidates(where, votes, policy))
                else:
                    cands.append(validate_candidates(where, row.get("candidates"), index))
            else:
                cands.append(validate_candidates(where, row.get("candidates"), index))
            anns.append(votes)
            ids.append(item_id)
            refs.append(ImageRef(label=where, sha256=digest, load=_file_loader(image_path, where)))
    if not ids:
        raise InputError(f"manifest {show(str(path), 200)} holds no items")
    return CandidateDataset(
        classes=classes, ids=ids, images=refs, candidates=cands, annotations=anns if any(anns) else None
    )
