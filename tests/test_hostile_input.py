"""Hostile input on the real app (PostgreSQL): every bad request is a 4xx problem naming the item,
never a 500, never half-stored, never a Python repr; a stalled client holds no database connection.

The tests in the second half run the app under a real uvicorn process (tests/hostile_app.py adds one
route that fails) so that connections, the pool and pg_stat_activity are the real ones.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
import uuid
import zipfile
import zlib
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.helpers import b64png, png_bytes

PROBLEM = "application/problem+json"
ROOT = Path(__file__).resolve().parent.parent
REPR = re.compile(r"object at 0x|<class '|\bb'|\bb\"|\{'|\\x[0-9a-f]{2}|Traceback")


def assert_problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["title"]
    assert not REPR.search(r.text), r.text
    return body


def new_dataset(client, auth, classes=("cat", "dog", "bird")) -> str:
    r = client.post("/v1/datasets", json={"name": "pets", "classes": list(classes)}, headers=auth)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def post_json(client, url: str, raw: str, auth):
    """POST a JSON text as written (so that escapes like \\u0000 and \\ud800 reach the server)."""
    return client.post(url, content=raw.encode(), headers=auth | {"Content-Type": "application/json"})


def make_zip(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def import_zip(client, ds: str, data: bytes, auth):
    return client.post(f"/v1/datasets/{ds}/imports", content=data, headers=auth | {"Content-Type": "application/zip"})


def item_count(db, ds: str) -> int:
    from sqlalchemy import func, select

    from app.datasets.models import Item

    return db.scalar(select(func.count()).select_from(Item).where(Item.dataset_id == uuid.UUID(ds)))


def big_png(width: int, height: int) -> bytes:
    """A valid grey PNG of the given size, compressed as it is written (13000 x 13000 is ~170 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(6)
    row = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def huge_png() -> bytes:
    return big_png(13000, 13000)


# ---- NUL characters and lone surrogates -------------------------------------------------------


@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800", "a\\udfffb"])
def test_nul_and_lone_surrogates_in_dataset_fields_are_422_naming_the_field(client, auth, bad):
    name = post_json(client, "/v1/datasets", f'{{"name": "x{bad}", "classes": ["a", "b"]}}', auth)
    assert assert_problem(name, 422)["detail"].startswith("body.name:")
    cls = post_json(client, "/v1/datasets", f'{{"name": "x", "classes": ["a", "b{bad}"]}}', auth)
    assert assert_problem(cls, 422)["detail"].startswith("body.classes.1:")
    key = post_json(client, "/v1/datasets", f'{{"name": "x", "classes": ["a", "b"], "k{bad}": 1}}', auth)
    assert assert_problem(key, 422)["errors"][0]["loc"][0] == "body"


@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800"])
def test_nul_and_lone_surrogates_in_items_are_422_naming_the_item(client, auth, db, bad):
    ds = new_dataset(client, auth)
    good = {"id": "ok", "image_base64": b64png(1), "candidates": ["cat"]}
    for field, value in (("id", f'"i{bad}"'), ("candidates", f'["cat", "d{bad}"]')):
        bad_item = json.dumps({"id": "x", "image_base64": b64png(2), "candidates": ["cat"]})
        bad_item = bad_item.replace('"x"', value) if field == "id" else bad_item.replace('["cat"]', value)
        raw = f'{{"items": [{json.dumps(good)}, {bad_item}]}}'
        detail = assert_problem(post_json(client, f"/v1/datasets/{ds}/items", raw, auth), 422)["detail"]
        assert detail.startswith(f"body.items.1.{field}"), detail
    assert item_count(db, ds) == 0


@pytest.mark.parametrize("bad", ["\\u0000", "\\ud800"])
def test_nul_and_lone_surrogates_in_a_zip_manifest_are_422_naming_the_item(client, auth, db, bad):
    ds = new_dataset(client, auth)
    lines = [
        '{"id": "a", "image": "a.png", "candidates": ["cat"]}',
        f'{{"id": "b{bad}", "image": "b.png", "candidates": ["cat"]}}',
        f'{{"id": "c", "image": "c{bad}.png", "candidates": ["cat"]}}',
        f'{{"id": "d", "image": "a.png", "candidates": ["cat{bad}"]}}',
    ]
    data = make_zip({"manifest.jsonl": "\n".join(lines).encode(), "a.png": png_bytes(1), "b.png": png_bytes(2)})
    body = assert_problem(import_zip(client, ds, data, auth), 422)
    assert body["detail"].startswith("3 of 4 items rejected, nothing stored; first: item 1")
    reasons = {i["index"]: i["reason"] for i in body["items"] if i["status"] == "rejected"}
    kind = "NUL character" if bad == "\\u0000" else "lone surrogate"
    assert kind in reasons[1] and "'id'" in reasons[1]
    assert "is not in the ZIP" in reasons[2]
    assert "is not among the classes" in reasons[3]
    assert [i["id"] for i in body["items"]][:2] == ["a", None]  # an id that cannot be stored is not echoed
    assert item_count(db, ds) == 0


# ---- cursors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [str(2**63), str(2**70), "-1", "--5", "+5", "1_0", "٣", "", "9" * 400])
def test_malformed_item_cursors_are_400(client, auth, value):
    import base64

    ds = new_dataset(client, auth)
    cursor = base64.urlsafe_b64encode(f"s:{value}".encode()).decode().rstrip("=")
    assert_problem(client.get(f"/v1/datasets/{ds}/items", params={"cursor": cursor}, headers=auth), 400)
    for raw in ("s:1", "%FF", "\u00e9", "====", "czox" * 100):
        assert_problem(client.get(f"/v1/datasets/{ds}/items", params={"cursor": raw}, headers=auth), 400)


# ---- damaged ZIPs -----------------------------------------------------------------------------

MANIFEST = "\n".join(
    json.dumps({"id": f"i{k}", "image": f"img/{k}.png", "candidates": ["cat", "dog"]}) for k in range(3)
).encode()


def sample_zip(method: int = zipfile.ZIP_DEFLATED) -> bytes:
    return make_zip({"manifest.jsonl": MANIFEST, **{f"img/{k}.png": png_bytes(k) for k in range(3)}}, method)


def _patch_entries(data: bytes, name: str, local_offset: int, central_offset: int, value: bytes) -> bytes:
    """Overwrite a field of ``name``'s local header and central directory entry."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(name)
    out[info.header_offset + local_offset : info.header_offset + local_offset + len(value)] = value
    at = 0
    while (at := bytes(out).find(b"PK\x01\x02", at + 1)) >= 0:
        (name_len,) = struct.unpack("<H", out[at + 28 : at + 30])
        if bytes(out[at + 46 : at + 46 + name_len]) == name.encode():
            out[at + central_offset : at + central_offset + len(value)] = value
    return bytes(out)


def corrupt_data(data: bytes, name: str) -> bytes:
    """``name``'s compressed bytes replaced by garbage of the same length (headers intact)."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(name)
    (name_len, extra_len) = struct.unpack("<HH", out[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    out[start : start + info.compress_size] = bytes([0xFF]) * info.compress_size
    return bytes(out)


DAMAGED = {
    "corrupt deflate data in the manifest": lambda: corrupt_data(sample_zip(), "manifest.jsonl"),
    "corrupt deflate data in an image": lambda: corrupt_data(sample_zip(), "img/1.png"),
    "encrypted manifest": lambda: _patch_entries(sample_zip(), "manifest.jsonl", 6, 8, b"\x01\x00"),
    "encrypted image": lambda: _patch_entries(sample_zip(), "img/2.png", 6, 8, b"\x01\x00"),
    "manifest compression method 97": lambda: _patch_entries(sample_zip(), "manifest.jsonl", 8, 10, b"\x61\x00"),
    "image compression method 97": lambda: _patch_entries(sample_zip(), "img/0.png", 8, 10, b"\x61\x00"),
    "truncated to half": lambda: sample_zip()[: len(sample_zip()) // 2],
    "truncated before the central directory": lambda: sample_zip()[:-30],
    "bzip2 member with corrupt data": lambda: corrupt_data(sample_zip(zipfile.ZIP_BZIP2), "manifest.jsonl"),
    "lzma member with corrupt data": lambda: corrupt_data(sample_zip(zipfile.ZIP_LZMA), "img/0.png"),
    "a name that is not UTF-8": lambda: _patch_entries(sample_zip(), "img/0.png", 6, 8, b"\x00\x08").replace(
        b"img/0.png", b"img/\xff.png"
    ),
}


@pytest.mark.parametrize("kind", list(DAMAGED))
def test_damaged_zips_are_422_and_store_nothing(client, auth, db, kind):
    ds = new_dataset(client, auth)
    body = assert_problem(import_zip(client, ds, DAMAGED[kind](), auth), 422)
    assert body["detail"]
    assert item_count(db, ds) == 0


def test_byte_flipped_zips_never_answer_500(client, auth, db):
    """200 seeded variants of valid archives with 1 to 4 bytes changed: each answer is a 201/200 or
    a 4xx problem, and a rejected archive stores nothing."""
    ds = new_dataset(client, auth)
    bases = [sample_zip(), sample_zip(zipfile.ZIP_STORED), sample_zip(zipfile.ZIP_BZIP2)]
    rng = random.Random(8)
    statuses: dict[int, int] = {}
    for n in range(200):
        data = bytearray(bases[n % len(bases)])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        before = item_count(db, ds)
        r = import_zip(client, ds, bytes(data), auth)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code in (200, 201) or 400 <= r.status_code < 500, (n, r.status_code, r.text)
        if r.status_code >= 400:
            assert_problem(r, r.status_code)
            assert item_count(db, ds) == before
    assert statuses.get(422, 0) > 50  # the flips really damaged most archives


# ---- manifest lines and candidate checks -------------------------------------------------------


def test_a_huge_manifest_line_is_refused_without_being_read_whole(client, auth):
    ds = new_dataset(client, auth)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf, zf.open("manifest.jsonl", "w") as f:
        f.write(b'{"id": "a", "candidates": ["cat"], "pad": "')
        block = b"x" * (1 << 20)
        for _ in range(256):  # one 256 MiB line
            f.write(block)
    tracemalloc.start()
    try:
        r = import_zip(client, ds, buf.getvalue(), auth)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    from app.core.settings import get_settings

    limit = get_settings().max_manifest_line_bytes
    assert assert_problem(r, 422)["detail"] == f"manifest line 1 is longer than {limit} bytes"
    assert peak < 4 * limit, peak


def test_candidate_checks_are_linear():
    from app.ml.data import validate_candidates

    classes = [f"class-{k}" for k in range(40_000)]
    index = {c: k for k, c in enumerate(classes)}
    started = time.perf_counter()
    out = validate_candidates("item 0", [*classes, *classes[:10]], index)
    assert time.perf_counter() - started < 0.5
    assert out == classes


def test_an_item_with_40000_candidates_is_stored_quickly(client, auth):
    classes = [f"class-{k}" for k in range(40_000)]
    ds = new_dataset(client, auth, classes=classes)
    item = {"id": "all", "image_base64": b64png(1), "candidates": classes}
    started = time.perf_counter()
    r = client.post(f"/v1/datasets/{ds}/items", json={"items": [item]}, headers=auth)
    assert r.status_code == 201, r.text
    assert time.perf_counter() - started < 5


# ---- the pixel cap ----------------------------------------------------------------------------


def test_a_13000_square_png_is_refused_on_upload_and_import_naming_item_and_size(client, auth, db, huge_png):
    import base64

    ds = new_dataset(client, auth)
    assert len(huge_png) < 1_000_000
    items = {"items": [{"id": "huge", "image_base64": base64.b64encode(huge_png).decode(), "candidates": ["cat"]}]}
    detail = assert_problem(client.post(f"/v1/datasets/{ds}/items", json=items, headers=auth), 422)["detail"]
    assert "item 0 (id 'huge'): image is 13000 x 13000 pixels (169,000,000), over the limit of 40,000,000" in detail
    data = make_zip(
        {
            "manifest.jsonl": b'{"id": "ok", "image": "ok.png", "candidates": ["cat"]}\n'
            b'{"id": "huge", "image": "huge.png", "candidates": ["cat"]}\n',
            "ok.png": png_bytes(1),
            "huge.png": huge_png,
        }
    )
    detail = assert_problem(import_zip(client, ds, data, auth), 422)["detail"]
    assert "item 1 (id 'huge'): image is 13000 x 13000 pixels" in detail
    assert item_count(db, ds) == 0


def test_the_pixel_cap_follows_the_setting_and_the_worker_decode_applies_it(client, auth, monkeypatch):
    from app.core.settings import get_settings
    from app.ml.features import ImageError, decode_image

    monkeypatch.setattr(get_settings(), "max_image_pixels", 32 * 32 - 1)
    ds = new_dataset(client, auth)
    r = client.post(
        f"/v1/datasets/{ds}/items",
        json={"items": [{"id": "a", "image_base64": b64png(1), "candidates": ["cat"]}]},
        headers=auth,
    )
    assert "32 x 32 pixels (1,024), over the limit of 1,023" in assert_problem(r, 422)["detail"]
    # the workers call decode_image without a limit: it reads CANDOR_MAX_IMAGE_PIXELS itself
    monkeypatch.setenv("CANDOR_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageError, match=r"image abc: image is 32 x 32 pixels \(1,024\), over the limit of 1,000"):
        decode_image(png_bytes(1), "image abc")


# ---- /predict ---------------------------------------------------------------------------------


@pytest.fixture
def classifier(client, auth, db, tiny):
    """A classifier row of the tenant (tiny backbone), as a finished job would store it."""
    import torch

    from app.classifiers.models import ClassifierRow
    from app.jobs.models import Job
    from app.ml.artifacts import Classifier

    ds = new_dataset(client, auth)
    tenant_id = db.execute(text("SELECT tenant_id FROM datasets WHERE id = :id"), {"id": ds}).scalar_one()
    job = Job(tenant_id=tenant_id, dataset_id=uuid.UUID(ds), state="succeeded", config={}, config_hash="x")
    db.add(job)
    db.flush()
    classes = ["cat", "dog", "bird"]
    feats = torch.nn.functional.normalize(
        torch.randn(3, tiny.embed_dim, generator=torch.Generator().manual_seed(0)), dim=1
    )
    clf = Classifier(
        backbone="tiny",
        backbone_id=tiny.id,
        classes=classes,
        ctx=torch.zeros(1, 4),
        class_features=feats,
        prior_features=feats.clone(),
        logit_scale=10.0,
    )
    row = ClassifierRow(
        tenant_id=tenant_id,
        job_id=job.id,
        dataset_id=job.dataset_id,
        version=clf.version,
        backbone="tiny",
        backbone_id=tiny.id,
        classes=classes,
        metrics={},
        artifact=clf.to_bytes(),
    )
    db.add(row)
    db.commit()
    return str(row.id)


def test_predict_input_checks(client, auth, classifier, huge_png):
    import base64

    url = f"/v1/classifiers/{classifier}/predict"
    ok = client.post(url, json={"images": [b64png(1)]}, headers=auth)
    assert ok.status_code == 200, ok.text
    huge = base64.b64encode(huge_png).decode()
    detail = assert_problem(client.post(url, json={"images": [b64png(1), huge]}, headers=auth), 422)["detail"]
    assert detail == "image 1: image is 13000 x 13000 pixels (169,000,000), over the limit of 40,000,000"
    files = [("files", ("a.png", png_bytes(1), "image/png")), ("files", ("b.png", huge_png, "image/png"))]
    assert (
        "image 1: image is 13000 x 13000" in assert_problem(client.post(url, files=files, headers=auth), 422)["detail"]
    )
    nul = post_json(client, url, f'{{"images": ["{b64png(1)}"], "candidates": ["cat", "d\\u0000"]}}', auth)
    assert assert_problem(nul, 422)["detail"] == "candidates 1: the name contains a NUL character (at position 1)"
    cow = client.post(url, json={"images": [b64png(1)], "candidates": ["cow"]}, headers=auth)
    assert assert_problem(cow, 422)["detail"] == "candidate 'cow' is not among the classifier's classes"
    surrogate = post_json(client, url, f'{{"images": ["{b64png(1)}"], "candidates": ["\\ud800"]}}', auth)
    assert_problem(surrogate, 422)
    garbage = client.post(url, json={"images": [base64.b64encode(b"not an image").decode()]}, headers=auth)
    assert assert_problem(garbage, 422)["detail"] == "image 0: not a readable image (unknown or unsupported format)"


def test_predict_caps_the_pixels_of_a_whole_request(client, auth, classifier, monkeypatch):
    from app.core.settings import get_settings

    url = f"/v1/classifiers/{classifier}/predict"
    # each 32 x 32 image is under the per-image cap; three of them are over a request budget of 2.5 images
    monkeypatch.setattr(get_settings(), "max_predict_pixels", 32 * 32 * 5 // 2)
    assert client.post(url, json={"images": [b64png(1), b64png(2)]}, headers=auth).status_code == 200
    r = client.post(url, json={"images": [b64png(1), b64png(2), b64png(3)]}, headers=auth)
    assert assert_problem(r, 413)["detail"] == (
        "image 2 brings the request to 3,072 pixels; one /predict request takes at most 2,560 pixels in all: "
        "send fewer images per request"
    )
    files = [("files", (f"{n}.png", png_bytes(n), "image/png")) for n in (1, 2, 3)]
    assert (
        "image 2 brings the request to 3,072 pixels"
        in assert_problem(client.post(url, files=files, headers=auth), 413)["detail"]
    )


# ---- body limits ------------------------------------------------------------------------------


def test_json_bodies_over_the_limit_are_413_before_buffering(client, auth, monkeypatch):
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "max_json_bytes", 8192)
    ds = new_dataset(client, auth)
    body = json.dumps({"items": [{"id": f"i{k}", "image_base64": b64png(k), "candidates": ["cat"]} for k in range(4)]})
    assert len(body) > 8192
    declared = client.post(
        f"/v1/datasets/{ds}/items", content=body, headers=auth | {"Content-Type": "application/json"}
    )
    assert "larger than the limit of 8192 bytes" in assert_problem(declared, 413)["detail"]

    def chunks():  # no Content-Length: the guard counts what arrives
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024].encode()

    chunked = client.post(
        f"/v1/datasets/{ds}/items", content=chunks(), headers=auth | {"Content-Type": "application/json"}
    )
    assert "larger than the limit of 8192 bytes" in assert_problem(chunked, 413)["detail"]
    small = client.post(
        f"/v1/datasets/{ds}/items",
        json={"items": [{"id": "a", "image_base64": b64png(1), "candidates": ["cat"]}]},
        headers=auth,
    )
    assert small.status_code == 201, small.text
    predict = client.post(
        f"/v1/classifiers/{uuid.uuid4()}/predict", content=body, headers=auth | {"Content-Type": "application/json"}
    )
    assert_problem(predict, 413)


# ---- error wording ----------------------------------------------------------------------------


def test_error_details_show_no_python_reprs(client, auth):
    ds = new_dataset(client, auth)
    bodies = [
        client.post(
            f"/v1/datasets/{ds}/items",
            json={"items": [{"id": "a", "image_base64": "bm90IGFuIGltYWdl", "candidates": ["cat"]}]},
            headers=auth,
        ),
        client.post(
            f"/v1/datasets/{ds}/items",
            json={"items": [{"id": "a", "image_base64": b64png(1), "candidates": [1, {"a": 1}]}]},
            headers=auth,
        ),
        import_zip(
            client,
            ds,
            make_zip(
                {
                    "manifest.jsonl": b'{"id": "a", "image": "a.png", "candidates": ["cat"]}',
                    "a.png": b"\x00\x01 garbage",
                }
            ),
            auth,
        ),
        import_zip(client, ds, make_zip({"manifest.jsonl": b'{"id": "x", "candidates": [1, {"a": 1}]}'}), auth),
        import_zip(client, ds, make_zip({"manifest.jsonl": b"\xff\xfe not utf-8"}), auth),
        import_zip(client, ds, make_zip({"manifest.jsonl": b"[" * 100_000}), auth),
        import_zip(client, ds, DAMAGED["encrypted image"](), auth),
        import_zip(client, ds, DAMAGED["a name that is not UTF-8"](), auth),
        import_zip(client, ds, corrupt_data(sample_zip(), "img/1.png"), auth),
        client.post("/v1/datasets", json={"name": "x", "classes": ["a", "a"]}, headers=auth),
    ]
    for r in bodies:
        body = assert_problem(r, 422)
        assert "0x" not in r.text and "<" not in body["detail"], r.text
    assert "not a readable image (unknown or unsupported format)" in bodies[0].json()["detail"]
    assert bodies[1].json()["detail"] == "body.items.0.candidates.0: Input should be a valid string"
    assert "candidate 0 is a number, not a class name" in bodies[3].json()["detail"]
    assert "not UTF-8" in bodies[4].json()["detail"]
    assert "nested too deeply" in bodies[5].json()["detail"]
    assert "encrypted" in bodies[6].json()["detail"]


# ---- a real server: stalled clients, pooled connections, a failing route ------------------------

APP_NAME = "candor-under-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(database):
    """uvicorn serving tests/hostile_app.py on the test database; (base url, auth header, pid)."""
    from app.core.security import create_key
    from app.datasets.models import Dataset

    with Session(database) as s:
        tenant, key = create_key(s, f"server-{uuid.uuid4().hex[:8]}")
        ds = Dataset(tenant_id=tenant.id, name="server", classes=["cat", "dog"])
        s.add(ds)
        s.commit()
        tenant_id, ds_id = tenant.id, ds.id
    port = _free_port()
    env = os.environ | {
        "CANDOR_DATABASE_URL": os.environ["CANDOR_DATABASE_URL"] + f"?application_name={APP_NAME}",
        "CANDOR_UPLOAD_READ_TIMEOUT_SECONDS": "3",
        "CANDOR_MAX_JSON_BYTES": "1000000",
        "CANDOR_AUTH_CACHE_SECONDS": "0",  # every request looks its key up in the database
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.hostile_app:create", "--factory", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.2)
    yield {
        "base": base,
        "auth": {"Authorization": f"Bearer {key}"},
        "pid": proc.pid,
        "tenant_id": tenant_id,
        "ds": ds_id,
    }
    proc.terminate()
    proc.wait(timeout=20)
    with database.begin() as conn:  # the tenant's rows go (by cascade): other tests see the database as before
        conn.execute(text("DELETE FROM tenants WHERE id = :id"), {"id": tenant_id})


def _server_connections(database, state: str | None = None) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = :app"
    with database.connect() as conn:
        if state is None:
            return conn.execute(text(sql), {"app": APP_NAME}).scalar_one()
        return conn.execute(text(sql + " AND state = :state"), {"app": APP_NAME, "state": state}).scalar_one()


def _settles_without_open_transactions(database, within: float = 5.0, also_active: bool = False) -> None:
    """The server's connections reach a state with none idle in a transaction (nor running a query,
    with ``also_active``) within ``within`` seconds and stay there for half a second: a query
    running at the moment of a look is not a connection held."""
    deadline = time.monotonic() + within
    clear_since = None
    while True:
        busy = _server_connections(database, "idle in transaction")
        if also_active:
            busy += _server_connections(database, "active")
        if busy == 0:
            clear_since = clear_since or time.monotonic()
            if time.monotonic() - clear_since >= 0.5:
                return
        else:
            clear_since = None
        assert time.monotonic() < deadline, "a server connection stays idle in a transaction"
        time.sleep(0.1)


def _deleted_files(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).endswith("(deleted)")
    return count


def test_stalled_uploads_hold_no_connection_and_time_out(server, database):
    from app.core.db import make_engine

    pool = make_engine(os.environ["CANDOR_DATABASE_URL"]).pool
    stalled_count = pool.size() + 10 + 5  # more than pool_size + max_overflow
    temp_before = _deleted_files(server["pid"])
    port = int(server["base"].rsplit(":", 1)[1])
    head = (
        f"POST /v1/datasets/{server['ds']}/imports HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: {server['auth']['Authorization']}\r\nContent-Type: application/zip\r\n"
        "Content-Length: 1000000\r\n\r\n"
    ).encode()
    stalled = []
    for _ in range(stalled_count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(head + b"PK\x03\x04" + b"\x00" * 1000)
        stalled.append(s)
    try:
        time.sleep(1.0)
        _settles_without_open_transactions(database)
        assert _deleted_files(server["pid"]) >= temp_before + stalled_count  # every upload is streaming to disk
        started = time.monotonic()
        r = httpx.get(server["base"] + f"/v1/datasets/{server['ds']}", headers=server["auth"], timeout=10)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < 5
        answers = []
        for s in stalled:
            s.settimeout(15)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            answers.append(data)
        for data in answers:
            assert data.startswith(b"HTTP/1.1 408"), data[:200]
            assert b"application/problem+json" in data and b"sent nothing for 3 seconds" in data
        time.sleep(0.5)
        assert _deleted_files(server["pid"]) <= temp_before  # the temporary files are gone
    finally:
        for s in stalled:
            s.close()


def test_a_chunked_body_over_the_limit_is_413_before_it_ends(server):
    port = int(server["base"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            f"POST /v1/datasets/{server['ds']}/items HTTP/1.1\r\nHost: test\r\n"
            f"Authorization: {server['auth']['Authorization']}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        piece = b"x" * 65536
        for _ in range(15):  # 983,040 bytes, then 17,000 more: over the limit of 1,000,000; the body never ends
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        time.sleep(0.3)
        sock.sendall(b"%x\r\n" % 17_000 + b"x" * 17_000 + b"\r\n")
        sock.settimeout(10)
        data = b""
        with contextlib.suppress(ConnectionResetError):  # the server closes without reading further
            while chunk := sock.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"larger than the limit of 1000000 bytes" in data


def test_labels_stream_out_without_holding_a_connection(server, database):
    from app.jobs.models import Job, JobResult

    n = 20_000
    with Session(database) as s:
        job = Job(tenant_id=server["tenant_id"], dataset_id=server["ds"], state="succeeded", config={}, config_hash="x")
        s.add(job)
        s.flush()
        s.execute(
            JobResult.__table__.insert(),
            [
                {
                    "job_id": job.id,
                    "item_seq": k + 1,
                    "external_id": f"item-{k:06d}",
                    "label": "cat",
                    "confidence": 0.9,
                    "posterior": {"cat": 0.9, "dog": 0.1},
                    "margin": 0.8,
                    "outside_mass": 0.0,
                    "ambiguous": False,
                    "candidates_suspect": False,
                    "prior_label": "dog",
                }
                for k in range(n)
            ],
        )
        s.commit()
        job_id = job.id
    port = int(server["base"].rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    try:
        sock.sendall(
            f"GET /v1/jobs/{job_id}/labels HTTP/1.1\r\nHost: test\r\n"
            f"Authorization: {server['auth']['Authorization']}\r\nConnection: close\r\n\r\n".encode()
        )
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        time.sleep(1.5)  # the client reads no further: the server waits on a full socket
        _settles_without_open_transactions(database, also_active=True)
        data = first
        sock.settimeout(30)
        while chunk := sock.recv(1 << 20):
            data += chunk
    finally:
        sock.close()
    payload = data.split(b"\r\n\r\n", 1)[1]
    assert payload.count(b'"label": "cat"') == n
    ids = re.findall(rb'"id": "(item-\d+)"', payload)
    assert ids == [f"item-{k:06d}".encode() for k in range(n)]


def test_a_500_answers_problem_json_and_keeps_the_connection(server):
    with httpx.Client(base_url=server["base"], timeout=10) as http:
        boom = http.get("/test-only/boom")
        assert boom.status_code == 500 and boom.headers["content-type"].startswith(PROBLEM)
        assert boom.json()["title"] == "Internal Server Error" and "RuntimeError" not in boom.text
        first = boom.extensions["network_stream"].get_extra_info("client_addr")
        again = http.get("/healthz")
        assert again.status_code == 200
        assert again.extensions["network_stream"].get_extra_info("client_addr") == first  # the same connection
