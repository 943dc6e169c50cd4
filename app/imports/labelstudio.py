"""Label Studio, in: a ZIP of a project's JSON export, its label config and the media.

The ZIP holds

- the export Label Studio writes with "Export -> JSON" (one ``*.json`` file: a list of tasks
  ``{id, data: {image: URL}, annotations: [{completed_by, was_cancelled, ground_truth, result}]}``),
- ``label_config.xml``, the project's labeling config: its ``<Choices>`` (the one pointing at an
  ``<Image>``) names the classes, each of which must be one of the dataset's,
- the media under the paths the export references: ``/data/upload/1/x.png`` is read from
  ``data/upload/1/x.png``, ``upload/1/x.png`` or ``media/upload/1/x.png``, and
  ``/data/local-files/?d=photos/x.png`` from ``photos/x.png``, ``local-files/photos/x.png`` or
  ``data/local-files/photos/x.png`` (each beside the export file).

Each task becomes an item whose id is the task id and whose annotations are the annotators'
choices: cancelled (skipped) annotations are left out, ``ground_truth`` is kept, the annotator is
``completed_by`` (the user's email when the export expands it, else the user id). A task left with
no annotation is skipped: it has no candidate set. The item keeps its Label Studio origin as
``source = {tool, task, project, from_name, to_name}``, which the labelstudio export writes back.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

from app.core.problems import Problem
from app.core.settings import get_settings
from app.datasets.service import ZIP_ERRORS, Incoming, zip_damage
from app.ml.data import InputError
from app.ml.text import show
from candor.labelconfig import LabelConfig, LabelConfigError, parse_label_config

CONFIG_NAME = "label_config.xml"
MAX_CONFIG_BYTES = 1 << 20
TOOL = "labelstudio"


def check_classes(config: LabelConfig, classes: Sequence[str]) -> None:
    """LabelConfigError naming the first choice of the config that is not one of ``classes``."""
    known = set(classes)
    for choice in config.choices:
        if choice not in known:
            raise LabelConfigError(
                f"the label config's choice {show(choice)} (<Choices name={show(config.from_name)}>) is not one of "
                "the dataset's classes"
            )


def annotator(annotation: dict) -> str:
    """Who made an annotation: ``completed_by`` (an email when the export expands the user, else
    the user id), else the annotation's own id."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    if isinstance(who, bool) or who is None or who == "":
        return f"annotation-{annotation.get('id')}"
    return str(who)


def task_annotations(task: dict, config: LabelConfig, classes: set[str]) -> list[dict]:
    """The task's annotations as Candor annotations ``{annotator, label, ground_truth?}``: one per
    annotator (a later annotation replaces an earlier one), cancelled ones left out, only the
    config's <Choices>. Problem 422 naming the task for a choice that is not a class."""
    task_id = task.get("id")
    anns = task.get("annotations") or []
    if not isinstance(anns, list):
        raise Problem(422, "Upload rejected", f"task {task_id}: 'annotations' is not a list")
    out: dict[str, dict] = {}
    for ann in anns:
        if not isinstance(ann, dict):
            raise Problem(422, "Upload rejected", f"task {task_id}: an annotation is not an object")
        if ann.get("was_cancelled"):
            continue
        results = ann.get("result") or []
        if not isinstance(results, list):
            raise Problem(422, "Upload rejected", f"task {task_id}: an annotation's 'result' is not a list")
        picked: list[str] = []
        for r in results:
            if not isinstance(r, dict) or r.get("type") != "choices" or r.get("from_name") != config.from_name:
                continue
            value = r.get("value")
            got = value.get("choices") if isinstance(value, dict) else None
            if not isinstance(got, list) or not all(isinstance(c, str) for c in got):
                raise Problem(422, "Upload rejected", f"task {task_id}: a choices result has no list of choices")
            picked.extend(got)
        if not picked:
            continue
        who = annotator(ann)
        if len(picked) > 1:
            raise Problem(
                422,
                "Upload rejected",
                f"task {task_id}: annotator {show(who)} picked {len(picked)} choices; Candor takes one class "
                'per annotator (use choice="single")',
            )
        if picked[0] not in classes:
            raise Problem(
                422,
                "Upload rejected",
                f"task {task_id}: annotator {show(who)} chose {show(picked[0])}, which is not one of the "
                "dataset's classes",
            )
        out.pop(who, None)
        out[who] = {"annotator": who, "label": picked[0]} | ({"ground_truth": True} if ann.get("ground_truth") else {})
    return list(out.values())


def media_paths(url: str) -> list[str]:
    """Where in the ZIP (relative to the export file) the image a task's URL names may be."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if path.startswith("/data/upload/"):
        rel = path.removeprefix("/data/upload/")
        return [f"data/upload/{rel}", f"upload/{rel}", f"media/upload/{rel}"]
    if path.startswith("/data/local-files"):
        d = parse_qs(parts.query).get("d", [""])[0].lstrip("/")
        return [d, f"local-files/{d}", f"data/local-files/{d}"] if d else []
    if parts.scheme or parts.netloc:
        return []
    return [path.lstrip("/")]


def _member(zf: zipfile.ZipFile, name: str, limit: int, what: str) -> bytes:
    try:
        with zf.open(name) as f:
            data = f.read(limit + 1)
    except ZIP_ERRORS as exc:
        raise Problem(422, "Upload rejected", f"{what} cannot be read: {zip_damage(exc)}") from exc
    if len(data) > limit:
        raise Problem(422, "Upload rejected", f"{what} is larger than {limit} bytes")
    return data


def _shallowest(names: list[str], what: str) -> str | None:
    if not names:
        return None
    names = sorted(names, key=lambda n: (n.count("/"), n))
    if len(names) > 1 and names[0].count("/") == names[1].count("/"):
        raise Problem(
            422, "Upload rejected", f"the ZIP holds several {what} ({show(names[0], 200)}, {show(names[1], 200)})"
        )
    return names[0]


def read_export(zf: zipfile.ZipFile) -> tuple[LabelConfig, list, str]:
    """(label config, tasks, the export's folder in the ZIP); Problem 422 for a ZIP that is not a
    Label Studio export with its label config."""
    settings = get_settings()
    names = [n for n in zf.namelist() if not n.endswith("/")]
    config_name = _shallowest([n for n in names if PurePosixPath(n).name == CONFIG_NAME], CONFIG_NAME)
    if config_name is None:
        raise Problem(
            422, "Upload rejected", f"the ZIP holds no {CONFIG_NAME} (the project's labeling config, for its classes)"
        )
    export_name = _shallowest([n for n in names if n.lower().endswith(".json")], "JSON files (one Label Studio export)")
    if export_name is None:
        raise Problem(422, "Upload rejected", "the ZIP holds no JSON file (Label Studio's JSON export)")
    raw_config = _member(zf, config_name, MAX_CONFIG_BYTES, CONFIG_NAME)
    try:
        config = parse_label_config(raw_config.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Problem(422, "Upload rejected", f"{CONFIG_NAME} is not UTF-8 text") from exc
    except LabelConfigError as exc:
        raise Problem(422, "Upload rejected", f"{CONFIG_NAME}: {exc}") from exc
    raw = _member(zf, export_name, settings.max_json_bytes, show(export_name, 200))
    try:
        tasks = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Problem(422, "Upload rejected", f"{show(export_name, 200)} is not JSON") from exc
    if not isinstance(tasks, list):
        raise Problem(
            422, "Upload rejected", f"{show(export_name, 200)} is not a list of tasks (Label Studio's JSON export)"
        )
    root = str(PurePosixPath(export_name).parent)
    return config, tasks, "" if root == "." else root + "/"


def read(zf: zipfile.ZipFile, classes: Sequence[str]) -> list[Incoming]:
    """The items of a Label Studio export ZIP (see the module's docstring)."""
    config, tasks, root = read_export(zf)
    try:
        check_classes(config, classes)
    except LabelConfigError as exc:
        raise Problem(422, "Upload rejected", f"{CONFIG_NAME}: {exc}") from exc
    settings = get_settings()
    available = set(zf.namelist())
    class_set = set(classes)
    seen: set[int] = set()
    out: list[Incoming] = []
    for n, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise Problem(422, "Upload rejected", f"task {n} of the export is not an object")
        task_id = task.get("id")
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise Problem(422, "Upload rejected", f"task {n} of the export has no integer 'id'")
        if task_id in seen:
            raise Problem(422, "Upload rejected", f"task {task_id} appears twice in the export")
        seen.add(task_id)
        data = task.get("data")
        url = data.get(config.data_key) if isinstance(data, dict) else None
        if not isinstance(url, str) or not url:
            raise Problem(
                422,
                "Upload rejected",
                f"task {task_id}: its data has no {show(config.data_key)} (the field <Image "
                f"name={show(config.to_name)}> shows)",
            )
        votes = task_annotations(task, config, class_set)
        if not votes:
            continue
        paths = [root + p for p in media_paths(url)]
        found = next((p for p in paths if p in available), None)

        looked = f" (looked for {', '.join(show(x, 200) for x in paths)})" if paths else " (a remote URL)"

        def read_image(p: str | None = found, u: str = url, tid: int = task_id, looked: str = looked) -> bytes:
            if p is None:
                raise InputError(f"task {tid}: image {show(u, 200)} is not in the ZIP{looked}")
            try:
                with zf.open(p) as fh:
                    return fh.read(settings.max_image_bytes + 1)
            except ZIP_ERRORS as exc:
                raise InputError(f"task {tid}: ZIP member {show(p, 200)} cannot be read: {zip_damage(exc)}") from exc

        project = task.get("project")
        source = {"tool": TOOL, "task": task_id, "from_name": config.from_name, "to_name": config.to_name}
        if isinstance(project, int) and not isinstance(project, bool):
            source["project"] = project
        out.append(
            Incoming(
                index=len(out), id=str(task_id), candidates=None, read=read_image, annotations=votes, source=source
            )
        )
    if not out:
        raise Problem(422, "Upload rejected", "the export holds no task with an annotation that was not cancelled")
    return out
