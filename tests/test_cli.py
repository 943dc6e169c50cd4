"""`candor clean` / `candor predict` end to end on the tiny model, and every kind of bad input."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.ml.artifacts import ArtifactError, Classifier
from tests.helpers import color_image

FAST = ["--backbone", "tiny", "--epochs", "2", "--quiet"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_clean_then_predict(tmp_path, write_dataset, capsys):
    manifest, classes = write_dataset()
    out = tmp_path / "out"
    code, _, err = run(
        capsys, "clean", manifest, "--classes", classes, "--out", out, "--cache", tmp_path / "c.sqlite", *FAST
    )
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"item-{i}" for i in range(12)]
    for r, i in zip(rows, range(12), strict=True):
        cands = {["cat", "dog", "bird"][i % 3], ["cat", "dog", "bird"][(i + 1) % 3]}
        assert set(r["posterior"]) == cands and r["label"] in cands and r["prior_label"] in cands
        assert sum(r["posterior"].values()) == pytest.approx(1.0, abs=1e-5)
        assert {"margin", "outside_mass", "ambiguous", "candidates_suspect", "confidence"} <= set(r)
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == "tiny" and config["train"]["epochs"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2

    clf = Classifier.load(out / "classifier")
    assert clf.classes == ["cat", "dog", "bird"] and clf.config["train"]["epochs"] == 2
    img = tmp_path / "new.png"
    color_image(99).save(img)
    code, out_text, err = run(capsys, "predict", out / "classifier", img, "--top-k", "2")
    assert code == 0, err
    pred = json.loads(out_text)
    assert pred["image"] == str(img) and len(pred["top"]) == 2 and pred["label"] == pred["top"][0]["label"]
    code, out_text, _ = run(capsys, "predict", out / "classifier", img, "--candidates", "dog,bird")
    assert {t["label"] for t in json.loads(out_text)["top"]} <= {"dog", "bird"}


def test_config_file_and_flags(tmp_path, write_dataset, capsys):
    manifest, classes = write_dataset(n=6)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"objective": {"name": "cc"}, "train": {"epochs": 3, "seed": 7}}))
    out = tmp_path / "out"
    code, _, err = run(
        capsys,
        "clean",
        manifest,
        "--classes",
        classes,
        "--out",
        out,
        "--config",
        cfg,
        "--backbone",
        "tiny",
        "--epochs",
        "1",
        "--alignment",
        "off",
        "--quiet",
    )
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["objective"]["name"] == "cc" and saved["train"] == saved["train"] | {"epochs": 1, "seed": 7}
    assert saved["alignment"]["enabled"] is False
    cfg.write_text(json.dumps({"train": {"epochs": 0}}))
    code, _, err = run(
        capsys, "clean", manifest, "--classes", classes, "--out", tmp_path / "o2", "--config", cfg, *FAST
    )
    assert code == 2 and "config file" in err and "epochs" in err


def test_seeded_runs_write_identical_results(tmp_path, write_dataset, capsys):
    manifest, classes = write_dataset(n=9)
    texts = []
    for name in ("a", "b"):
        code, _, err = run(capsys, "clean", manifest, "--classes", classes, "--out", tmp_path / name, *FAST)
        assert code == 0, err
        texts.append((tmp_path / name / "results.jsonl").read_text())
    assert texts[0] == texts[1]
    a, b = (Classifier.load(tmp_path / n / "classifier") for n in ("a", "b"))
    assert a.version == b.version


def _png(tmp_path, name, seed=0):
    (tmp_path / "img").mkdir(exist_ok=True)
    color_image(seed).save(tmp_path / "img" / name)
    return f"img/{name}"


@pytest.mark.parametrize(
    "rows, classes, message",
    [
        ([{"id": "a", "image": "IMG", "candidates": []}], None, "line 2 (id 'a'): empty candidate set"),
        ([{"id": "a", "image": "IMG", "candidates": ["cow"]}], None, "line 2 (id 'a'): candidate 'cow' is not among"),
        (
            [{"id": "a", "image": "IMG", "candidates": ["cat"]}] * 2,
            None,
            "line 3 (id 'a'): duplicate id, first seen on line 2",
        ),
        (
            [{"id": "a", "image": "IMG", "candidates": ["cat"]}],
            ["cat", "dog", "cat"],
            "class 3: duplicate class name 'cat'",
        ),
        ([{"id": "a", "image": "IMG", "candidates": ["cat"]}], ["cat"], "need at least two classes, got 1"),
        (
            [{"id": "a", "image": "img/none.png", "candidates": ["cat"]}],
            None,
            "line 2 (id 'a'): image 'img/none.png' does not exist",
        ),
        (["{not json"], None, "manifest line 2: not valid JSON"),
        ([{"image": "IMG", "candidates": ["cat"]}], None, "manifest line 2: missing or empty 'id'"),
    ],
    ids=[
        "empty-set",
        "unknown-candidate",
        "duplicate-id",
        "duplicate-class",
        "one-class",
        "missing-image",
        "not-json",
        "no-id",
    ],
)
def test_bad_input_names_item_and_writes_nothing(tmp_path, write_dataset, capsys, rows, classes, message):
    img = _png(tmp_path, "ok.png")
    rows = [{**r, "image": img} if isinstance(r, dict) and r["image"] == "IMG" else r for r in rows]
    good = {"id": "z", "image": img, "candidates": ["dog"]}
    manifest, classes_file = write_dataset(rows=[good, *rows], classes=classes or ["cat", "dog"])
    out = tmp_path / "out"
    code, _, err = run(capsys, "clean", manifest, "--classes", classes_file, "--out", out, *FAST)
    assert code == 2
    assert message in err, err
    assert not out.exists()


def test_unreadable_image_writes_nothing(tmp_path, write_dataset, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rows = [
        {"id": "ok", "image": _png(tmp_path, "ok.png"), "candidates": ["cat"]},
        {"id": "bad", "image": "img/broken.png", "candidates": ["cat", "dog"]},
    ]
    manifest, classes = write_dataset(rows=rows, classes=["cat", "dog"])
    out = tmp_path / "out"
    code, _, err = run(capsys, "clean", manifest, "--classes", classes, "--out", out, *FAST)
    assert code == 2 and "line 2 (id 'bad'): not a readable image" in err
    assert not out.exists()


def test_artifact_is_safetensors_plus_json_and_detects_tampering(tmp_path, write_dataset, capsys):
    manifest, classes = write_dataset(n=6)
    out = tmp_path / "out"
    assert run(capsys, "clean", manifest, "--classes", classes, "--out", out, *FAST)[0] == 0
    folder = out / "classifier"
    assert sorted(p.name for p in folder.iterdir()) == ["classifier.json", "classifier.safetensors"]
    raw = (folder / "classifier.safetensors").read_bytes()
    assert json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])  # a safetensors header, not a pickle
    clf = Classifier.load(folder)
    again = Classifier.from_bytes(clf.to_bytes())
    assert again.version == clf.version and again.classes == clf.classes
    meta = json.loads((folder / "classifier.json").read_text())
    meta["classes"] = ["bird", "dog", "cat"]
    (folder / "classifier.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="corrupt"):
        Classifier.load(folder)
    code, _, err = run(capsys, "predict", tmp_path, tmp_path / "img" / "0.png")
    assert code == 2 and "not a classifier folder" in err


def test_backbone_mismatch_is_refused(tiny, tmp_path, write_dataset, capsys):
    manifest, classes = write_dataset(n=6)
    assert run(capsys, "clean", manifest, "--classes", classes, "--out", tmp_path / "o", *FAST)[0] == 0
    clf = Classifier.load(tmp_path / "o" / "classifier")
    clf.backbone_id = "openclip:other"
    with pytest.raises(ArtifactError, match="trained on backbone"):
        clf.predict(tiny, [color_image(0)])


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("paper", {"enabled": True, "mode": "paper", "auto_trust": False}),
        ("paper-auto", {"enabled": True, "mode": "paper", "auto_trust": True}),
        ("auto", {"enabled": True, "mode": "target", "auto_trust": True}),
        ("on", {"enabled": True, "mode": "target", "auto_trust": False}),
        ("off", {"enabled": False}),
    ],
)
def test_alignment_flag_sets_the_mode_and_trust(choice, expected):
    from app.cli import build_config, parser

    args = parser().parse_args(["clean", "m.jsonl", "--classes", "c.txt", "--out", "o", "--alignment", choice])
    alignment = build_config(args).alignment.model_dump()
    assert alignment == alignment | expected


def test_clean_with_the_papers_alignment(tmp_path, write_dataset, capsys):
    manifest, classes = write_dataset(n=9)
    out = tmp_path / "out"
    code, _, err = run(capsys, "clean", manifest, "--classes", classes, "--out", out, "--alignment", "paper", *FAST)
    assert code == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["alignment"]["mode"] == "paper" and saved["alignment"]["auto_trust"] is False
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert len(history) == 2 and all(h["align_weight"] > 0 for h in history)


def test_config_schema_documents_the_alignment_modes(capsys):
    code, out, _ = run(capsys, "config", "--schema")
    assert code == 0
    mode = json.loads(out)["$defs"]["AlignmentConfig"]["properties"]["mode"]
    assert set(mode["enum"]) == {"paper", "target", "extra_loss", "both"}
    assert "palace.py" in mode["description"] and "Candor's extensions" in mode["description"]


def test_preset_flag_applies_the_recipe_under_the_other_flags(tmp_path):
    from app.cli import build_config, parser

    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"train": {"optimizer": "adamw", "weight_decay": 0.1, "seed": 4}}))
    argv = ["clean", "m.jsonl", "--classes", "c.txt", "--out", "o", "--config", str(cfg_file)]
    cfg = build_config(parser().parse_args([*argv, "--preset", "coop", "--epochs", "7"]))
    assert cfg.preset == "coop" and cfg.train.optimizer == "sgd" and cfg.train.weight_decay == 5e-4
    assert cfg.train.epochs == 7 and cfg.train.seed == 4  # the flags win; the file keeps what the preset leaves
    assert build_config(parser().parse_args(argv)).train.weight_decay == 0.1


@pytest.mark.parametrize("argv", [["db", "upgrade"], ["keys", "create", "--tenant", "t"]])
def test_unreachable_database_is_one_line_not_a_traceback(argv, monkeypatch, capsys):
    from app.core.settings import get_settings

    monkeypatch.setenv("CANDOR_DATABASE_URL", "postgresql+psycopg://candor@127.0.0.1:1/candor?connect_timeout=2")
    monkeypatch.delenv("CANDOR_EMBEDDED", raising=False)
    get_settings.cache_clear()
    try:
        code = main(argv)
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert code == 3
    assert "cannot reach the database postgresql+psycopg://candor@127.0.0.1:1/candor" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
