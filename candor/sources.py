"""Reading what ``Client.upload`` sends: a folder, a manifest.jsonl or an iterable of items.

- A folder holding ``manifest.jsonl`` is read as that manifest.
- A folder without one is ImageFolder-style: ``CLASS/ID.png``. An image whose file name (without
  extension) appears under several class folders is one item whose candidates are those classes;
  its copies must be identical files.
- A manifest holds one JSON object a line: ``{"id", "image", "candidates"}``, the image path
  relative to the manifest; a line without ``image`` takes the one image file named after its id.
  A line may give ``annotations`` (``[{"annotator", "label"}]``) besides or instead of
  ``candidates``; the dataset's candidate policy derives the set from them.

Images are read when their batch is sent, never all at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from candor.errors import InvalidSource

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass
class SourceItem:
    """One item to upload; ``read`` returns the image file's bytes."""

    id: str
    candidates: list[str] | None
    read: Callable[[], bytes]
    annotations: list[dict[str, Any]] | None = None


def _quote(text: object, limit: int = 120) -> str:
    s = str(text)
    return json.dumps(s if len(s) <= limit else s[:limit] + "...", ensure_ascii=False)


def _reader(path: Path, what: str) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise InvalidSource(f"{what}: cannot read {_quote(path)} ({exc.strerror or 'read error'})") from exc

    return read


def _images_under(root: Path) -> Iterator[Path]:
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(".") for s in p.parts[-2:]):
            yield p


def from_manifest(manifest: Path) -> list[SourceItem]:
    root = manifest.parent
    by_stem: dict[str, list[Path]] | None = None
    items: list[SourceItem] = []
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidSource(f"manifest {_quote(manifest)} cannot be read ({exc.strerror or 'read error'})") from exc
    except UnicodeDecodeError as exc:
        raise InvalidSource(f"manifest {_quote(manifest)} is not UTF-8 text") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"manifest line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidSource(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise InvalidSource(f"{where}: expected a JSON object with id, image and candidates")
        item_id, image, candidates = row.get("id"), row.get("image"), row.get("candidates")
        if not isinstance(item_id, str) or not item_id:
            raise InvalidSource(f"{where}: 'id' must be a non-empty string")
        if isinstance(image, str) and image:
            path = root / image
        else:
            if by_stem is None:
                by_stem = {}
                for p in _images_under(root):
                    by_stem.setdefault(p.stem, []).append(p)
            matches = by_stem.get(item_id, [])
            if len(matches) != 1:
                found = "no image file" if not matches else f"{len(matches)} image files"
                raise InvalidSource(f"{where}: no 'image', and {found} named after id {_quote(item_id)}")
            path = matches[0]
        if not path.is_file():
            raise InvalidSource(f"{where} (id {_quote(item_id)}): image {_quote(image)} does not exist")
        read = _reader(path, f"{where} (id {_quote(item_id)})")
        items.append(SourceItem(item_id, candidates, read, row.get("annotations")))  # type: ignore[arg-type]
    return items


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_folder_classes(folder: Path) -> list[str]:
    """The class folders of an ImageFolder-style folder, sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def from_image_folder(folder: Path) -> list[SourceItem]:
    copies: dict[str, list[tuple[str, Path]]] = {}
    for cls in image_folder_classes(folder):
        for p in sorted((folder / cls).iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                copies.setdefault(p.stem, []).append((cls, p))
    if not copies:
        raise InvalidSource(
            f"folder {_quote(folder)} holds neither manifest.jsonl nor images in class folders (CLASS/ID.png)"
        )
    items = []
    for item_id, found in copies.items():
        first = found[0][1]
        if len(found) > 1:
            digest = _digest(first)
            for _, other in found[1:]:
                if other.stat().st_size != first.stat().st_size or _digest(other) != digest:
                    raise InvalidSource(
                        f"id {_quote(item_id)}: {_quote(first.relative_to(folder))} and "
                        f"{_quote(other.relative_to(folder))} differ; the copies of one image under several "
                        "class folders must be the same file"
                    )
        items.append(SourceItem(item_id, [cls for cls, _ in found], _reader(first, f"id {_quote(item_id)}")))
    return items


def from_path(path: Path) -> list[SourceItem]:
    if path.is_dir():
        manifest = path / "manifest.jsonl"
        return from_manifest(manifest) if manifest.is_file() else from_image_folder(path)
    if path.is_file():
        return from_manifest(path)
    raise InvalidSource(f"{_quote(path)} does not exist")


def from_iterable(rows: Iterable[Any]) -> list[SourceItem]:
    """Items given as mappings ``{id, image, candidates}`` or ``{id, image, annotations}`` (or
    both): ``image`` a path, bytes or a PIL image; ``annotations`` a list of ``{annotator, label}``."""
    from candor.client import image_bytes

    items = []
    for n, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or not {"id", "image"} <= row.keys()
            or not {"candidates", "annotations"} & row.keys()
        ):
            raise InvalidSource(f"item {n}: expected a mapping with id, image and candidates or annotations")
        image = row["image"]
        items.append(
            SourceItem(row["id"], row.get("candidates"), lambda image=image: image_bytes(image), row.get("annotations"))
        )
    return items
