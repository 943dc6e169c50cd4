"""/docs (Swagger UI) and /redoc (ReDoc) work offline: their pages name no asset outside the app,
and every asset they name is served here."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
EXTERNAL = re.compile(r"""["'(]\s*(?:https?:)?//""")


@pytest.fixture(scope="module")
def app_client():
    from app.main import create_app

    with TestClient(create_app()) as c:
        yield c


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ],
)
def test_docs_pages_load_every_asset_from_the_app(app_client, page, expected):
    answer = app_client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    html = answer.text
    assert not EXTERNAL.search(html), [line for line in html.splitlines() if EXTERNAL.search(line)]
    assert "/openapi.json" in html
    if page == "/docs":
        assert '"validatorUrl": null' in html  # Swagger UI would otherwise call validator.swagger.io
    assets = ASSET.findall(html)
    assert {a.rsplit("/", 1)[-1] for a in assets} == expected
    for asset in assets:
        assert asset.startswith("/docs/assets/"), asset
        served = app_client.get(asset)
        assert served.status_code == 200 and len(served.content) > 1000, asset
    assert app_client.get("/openapi.json").status_code == 200
