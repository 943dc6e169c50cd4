"""A running Label Studio, read and written over its REST API (what label-studio-sdk calls).

- :func:`export_zip` writes a project's JSON export, its labeling config (``label_config.xml``)
  and its task images into the ZIP the service's ``format=labelstudio`` import reads.
- :func:`push_predictions` imports Candor's ``format=labelstudio`` predictions into the project.

The token is a Label Studio personal access token (a JWT, exchanged for an access token) or a
legacy token. Only httpx is needed: label-studio-sdk pins numpy below what the service uses, so
it is not a dependency.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import httpx

from candor.errors import CandorError
from candor.labelconfig import LabelConfig, LabelConfigError, parse_label_config

CONFIG_NAME = "label_config.xml"
EXPORT_NAME = "export.json"


class LabelStudio:
    """A Label Studio at ``url`` with a token."""

    def __init__(self, url: str, token: str, timeout: float = 120.0):
        self.url = url.rstrip("/") + "/"
        self._http = httpx.Client(timeout=timeout)
        self._http.headers["Authorization"] = self._authorization(token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _authorization(self, token: str) -> str:
        if token.count(".") != 2:
            return f"Token {token}"
        r = self._http.post(urljoin(self.url, "api/token/refresh"), json={"refresh": token})
        if r.status_code != 200:
            raise CandorError(f"Label Studio refused the personal access token (HTTP {r.status_code})")
        return f"Bearer {r.json()['access']}"

    def _get(self, path: str, **params: Any) -> httpx.Response:
        try:
            r = self._http.get(urljoin(self.url, path.lstrip("/")), params=params or None)
        except httpx.HTTPError as exc:
            raise CandorError(f"Label Studio at {self.url} cannot be reached: {exc}") from exc
        if r.status_code != 200:
            raise CandorError(f"Label Studio answered HTTP {r.status_code} to GET {path}: {r.text[:300]}")
        return r

    def project(self, project: int) -> dict:
        return self._get(f"api/projects/{project}/").json()

    def export(self, project: int) -> list[dict]:
        """The project's annotated tasks in Label Studio's JSON export format."""
        return self._get(f"api/projects/{project}/export", exportType="JSON").json()

    def media(self, ref: str) -> bytes:
        """A task's image: a path relative to Label Studio (sent with the token) or a URL."""
        if urlsplit(ref).scheme:
            same = ref.startswith(self.url)
            r = self._http.get(ref) if same else httpx.get(ref, timeout=120)
            if r.status_code != 200:
                raise CandorError(f"image {ref} answered HTTP {r.status_code}")
            return r.content
        return self._get(ref).content

    def push_predictions(self, project: int, predictions: list[dict]) -> int:
        """Import predictions (Candor's format=labelstudio export) into the project; how many."""
        url = urljoin(self.url, f"api/projects/{project}/import/predictions")
        r = self._http.post(url, json=predictions)
        if r.status_code not in (200, 201):
            raise CandorError(f"Label Studio did not import the predictions (HTTP {r.status_code}): {r.text[:300]}")
        return len(predictions)


def zip_path(ref: str) -> str:
    """Where the service's import looks for a task's image: ``/data/upload/X`` under
    ``data/upload/X``, ``/data/local-files/?d=P`` under ``P``, an http(s) URL under ``remote/`` (with
    a digest of the whole URL when it has a query, so signed or ``?id=`` URLs of one path stay apart)."""
    parts = urlsplit(ref)
    path = unquote(parts.path)
    if path.startswith("/data/local-files"):
        return parse_qs(parts.query).get("d", [""])[0].lstrip("/")
    if parts.scheme:
        tail = f"-{hashlib.sha256(ref.encode()).hexdigest()[:12]}" if parts.query else ""
        return f"remote/{parts.netloc}{path}{tail}"
    return path.lstrip("/")


def parsed(label_config: str) -> LabelConfig:
    """The project's config as the service reads it (the <Choices> that labels an <Image>)."""
    try:
        return parse_label_config(label_config)
    except LabelConfigError as exc:
        raise CandorError(f"the project's labeling config: {exc}") from exc


def export_zip(url: str, token: str, project: int, out: str | Path) -> tuple[Path, list[str]]:
    """Write the project's export, config and task images into the ZIP ``out``; returns it and
    the config's choices. Remote image URLs are stored under ``remote/`` and the tasks rewritten
    to point there."""
    out = Path(out)
    with LabelStudio(url, token) as ls:
        text = ls.project(project)["label_config"]
        config = parsed(text)
        key = config.data_key
        tasks = ls.export(project)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(CONFIG_NAME, text)
            written: set[str] = set()
            for task in tasks:
                ref = (task.get("data") or {}).get(key)
                if not isinstance(ref, str) or not ref:
                    continue
                path = zip_path(ref)
                if urlsplit(ref).scheme:
                    task["data"][key] = path
                if path and path not in written:
                    zf.writestr(path, ls.media(ref))
                    written.add(path)
            zf.writestr(EXPORT_NAME, json.dumps(tasks))
    return out, list(config.choices)


def push_predictions(url: str, token: str, project: int, predictions: list[dict]) -> int:
    with LabelStudio(url, token) as ls:
        return ls.push_predictions(project, predictions)
