"""One backbone registry: specs, help, config validation and the docs table all derive from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.ml.backbones import BACKBONES, backbones_table, list_backbones, parse_spec, spec_help
from app.ml.config import PRESETS, CleanConfig

ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_every_kind_with_a_known_preset_and_importable_hooks():
    assert list_backbones() == ["offline", "tiny", "openclip"]
    for entry in BACKBONES.values():
        assert entry.preset in PRESETS
        for hook in ("load", "check_prompts") + (("check",) if entry.check else ()):
            assert callable(entry.hook(hook)), (entry.kind, hook)


@pytest.mark.parametrize(
    "spec, parsed",
    [
        ("offline", ("offline", None, None)),
        ("tiny", ("tiny", None, None)),
        ("openclip:ViT-B-32", ("openclip", "ViT-B-32", None)),
        ("openclip:ViT-B-32:", ("openclip", "ViT-B-32", None)),
        ("openclip:ViT-B-32:laion2b_s34b_b79k", ("openclip", "ViT-B-32", "laion2b_s34b_b79k")),
        ("openclip:ViT-B-32:file:rel/a:b.pt", ("openclip", "ViT-B-32", "file:rel/a:b.pt")),
    ],
)
def test_specs_parse_through_the_registry(spec, parsed):
    assert parse_spec(spec) == parsed
    assert CleanConfig(backbone=spec).backbone == spec


@pytest.mark.parametrize("spec", ["clip-ish", "offline:x", "tiny:", "openclip", "openclip:", "openclip::tag", ""])
def test_bad_specs_are_refused_by_the_config_naming_the_grammar(spec):
    with pytest.raises(ValueError, match="backbone"):
        CleanConfig(backbone=spec)
    with pytest.raises(ValueError):
        parse_spec(spec)


def test_help_schema_and_docs_derive_from_the_registry(capsys):
    from app.cli import main

    schema = CleanConfig.model_json_schema()["properties"]["backbone"]["description"]
    assert spec_help() in schema
    with pytest.raises(SystemExit):
        main(["clean", "--help"])
    assert "openclip:MODEL[:TAG|:/abs/file.pt|:file:PATH]" in " ".join(capsys.readouterr().out.split())
    docs = (ROOT / "docs" / "backbones.md").read_text()
    assert backbones_table() in docs, "docs/backbones.md: regenerate the table from backbones_table()"


def test_importing_the_config_does_not_import_torch():
    code = "import sys, app.ml.config; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
