"""Job configs the worker would refuse are refused at POST /v1/jobs instead (422 naming the field),
and checkpoint files come only from the directories the operator lists, in the API and the worker."""

from __future__ import annotations

import pytest
import torch

from app.core import registry
from app.core.settings import get_settings
from app.ml.backbones import BackboneUnavailable, check_prompts, load_backbone
from app.ml.config import LR_MAX, SEED_MAX, SEED_MIN, CleanConfig
from app.ml.trainer import seed_everything
from tests.helpers import b64png

PROBLEM = "application/problem+json"
LONG_CLASS = " ".join(["x"] * 70)  # 70 tokens: a tiny prompt fits with n_ctx <= 3, not with 4


def new_dataset(client, auth, classes=("cat", "dog", "bird")) -> str:
    r = client.post("/v1/datasets", json={"name": "pets", "classes": list(classes)}, headers=auth)
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    items = [{"id": f"i{k}", "image_base64": b64png(k), "candidates": list(classes[:2])} for k in range(2)]
    r = client.post(f"/v1/datasets/{ds}/items", json={"items": items}, headers=auth)
    assert r.status_code in (200, 201), r.text
    return ds


def submit(client, auth, ds, config):
    return client.post("/v1/jobs", json={"dataset_id": ds, "config": config}, headers=auth)


def refused(r, *words: str) -> str:
    """The problem's detail, after checking it is a 422 problem+json that names every word."""
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    detail = r.json()["detail"]
    for word in words:
        assert word in detail, (word, detail)
    assert " at 0x" not in r.text
    return detail


@pytest.fixture
def checkpoint_dirs(monkeypatch, tmp_path):
    """Point CANDOR_CHECKPOINT_DIRS at a fresh folder (settings re-read), restored afterwards."""

    def set_dirs(*dirs):
        monkeypatch.setenv("CANDOR_CHECKPOINT_DIRS", ":".join(str(d) for d in dirs))
        get_settings.cache_clear()

    yield set_dirs
    monkeypatch.delenv("CANDOR_CHECKPOINT_DIRS", raising=False)
    get_settings.cache_clear()


# --- the seed range is torch's own -------------------------------------------------------------


def test_seed_bounds_are_exactly_what_torch_accepts():
    for seed in (SEED_MIN, SEED_MAX):
        assert CleanConfig.model_validate({"train": {"seed": seed}}).train.seed == seed
        seed_everything(seed)
        torch.Generator().manual_seed(seed)
    for seed in (SEED_MIN - 1, SEED_MAX + 1):
        with pytest.raises(ValueError):
            CleanConfig.model_validate({"train": {"seed": seed}})
        with pytest.raises((RuntimeError, ValueError, OverflowError)):
            torch.manual_seed(seed)


def test_unfit_seed_and_lr_are_422_naming_the_field(client, auth):
    ds = new_dataset(client, auth)
    assert "train.seed" in refused(submit(client, auth, ds, {"backbone": "tiny", "train": {"seed": 2**70}}))
    for lr in (1e38, LR_MAX * 2, 0.0, -1.0):
        assert "train.lr" in refused(submit(client, auth, ds, {"backbone": "tiny", "train": {"lr": lr}}))
    for lr in ("NaN", "Infinity", "-Infinity"):  # JSON extensions Python's parser accepts
        body = '{"dataset_id": "DS", "config": {"backbone": "tiny", "train": {"lr": LR}}}'.replace("DS", ds)
        body = body.replace("LR", lr)
        r = client.post("/v1/jobs", content=body, headers=auth | {"Content-Type": "application/json"})
        assert "train.lr" in refused(r, "finite")
    ok = submit(client, auth, ds, {"backbone": "tiny", "train": {"seed": SEED_MAX, "lr": LR_MAX}})
    assert ok.status_code == 202, ok.text


@pytest.mark.parametrize(
    "template, words",
    [
        ("{}{", ["templates", "Single '{'"]),
        ("{0} {}", ["templates", "exactly one"]),
        ("a {} {x}", ["templates", "exactly one"]),
        ("a photo of {{}}", ["templates", "exactly one"]),
        ("a {!r}", ["templates", "exactly one"]),
        ("no placeholder", ["templates", "exactly one"]),
    ],
)
def test_bad_templates_are_422(client, auth, template, words):
    ds = new_dataset(client, auth)
    r = submit(client, auth, ds, {"backbone": "tiny", "templates": ["a photo of a {}.", template]})
    assert "templates[1]" in refused(r, *words)  # the message points at the bad one


def test_templates_that_format_are_accepted(client, auth):
    ds = new_dataset(client, auth)
    r = submit(client, auth, ds, {"backbone": "tiny", "templates": ["a {{fancy}} photo of a {}.", "{}"]})
    assert r.status_code == 202, r.text


def test_text_with_nul_or_lone_surrogate_is_422_not_500(client, auth):
    ds = new_dataset(client, auth)
    refused(submit(client, auth, ds, {"backbone": "tiny", "prompt": {"ctx_init": "a\u0000b"}}), "ctx_init", "NUL")
    body = '{"dataset_id": "DS", "config": {"backbone": "tiny", "templates": ["\\ud800 {}"]}}'.replace("DS", ds)
    r = client.post("/v1/jobs", content=body, headers=auth | {"Content-Type": "application/json"})
    assert "\ud800" not in refused(r, "templates", "surrogate")


# --- open_clip models, tags and text towers, checked without weights ---------------------------


@pytest.mark.parametrize(
    "backbone, words",
    [
        ("openclip:NoSuchModel-B-99", ["config.backbone", "unknown open_clip model", "NoSuchModel-B-99"]),
        ("openclip:ViT-B-32:no_such_tag", ["config.backbone", "unknown pretrained tag", "laion2b_s34b_b79k"]),
        ("openclip:candor-tiny:laion2b", ["config.backbone", "no pretrained tags", "file:PATH"]),
        ("openclip:coca_ViT-B-32", ["config.backbone", "class embedding"]),
        ("clip-ish", ["config.backbone", "unknown backbone"]),
    ],
)
def test_unknown_models_tags_and_unusable_towers_are_422(client, auth, backbone, words):
    ds = new_dataset(client, auth)
    assert "config.backbone" in refused(submit(client, auth, ds, {"backbone": backbone}), *words)


def test_known_tag_is_accepted_without_loading_weights(client, auth):
    ds = new_dataset(client, auth)
    assert submit(client, auth, ds, {"backbone": "openclip:ViT-B-32:laion2b_s34b_b79k"}).status_code == 202


def test_long_ctx_init_is_422_naming_ctx_init(client, auth):
    ds = new_dataset(client, auth)
    ctx = " ".join(["photo"] * 100)
    refused(submit(client, auth, ds, {"backbone": "tiny", "prompt": {"ctx_init": ctx}}), "prompt.ctx_init", "too long")
    refused(submit(client, auth, ds, {"prompt": {"ctx_init": "word " * 600}}), "prompt.ctx_init", "too long")  # offline
    assert submit(client, auth, ds, {"backbone": "tiny", "prompt": {"ctx_init": "a photo of a"}}).status_code == 202


def test_class_too_long_for_the_text_tower_is_422_at_the_same_bound_as_the_worker(client, auth, tiny):
    classes = ["cat", LONG_CLASS]
    # The worker's own prompt encoder draws the line between n_ctx 3 and 4 ...
    tiny.prompt_encoder(classes, 3)
    with pytest.raises(ValueError, match="too long"):
        tiny.prompt_encoder(classes, 4)
    # ... and so does the submission check.
    ds = new_dataset(client, auth, classes=classes)
    detail = refused(submit(client, auth, ds, {"backbone": "tiny", "prompt": {"n_ctx": 4}}), "class name", "too long")
    assert "prompt.n_ctx" in detail and "(139 characters)" in detail  # the long name is cut in the message
    assert submit(client, auth, ds, {"backbone": "tiny", "prompt": {"n_ctx": 3}}).status_code == 202


def test_offline_class_too_long_matches_its_prompt_encoder(offline):
    classes = ["cat", " ".join(["word"] * 500)]  # 500 tokens + [CLS] . [SEP]: fits 512 with n_ctx 9, not 10
    offline.prompt_encoder(classes, 9)
    check_prompts("offline", classes, 9, None)
    with pytest.raises(ValueError, match="too long"):
        offline.prompt_encoder(classes, 10)
    with pytest.raises(ValueError, match="too long"):
        check_prompts("offline", classes, 10, None)


def test_worker_ctx_init_error_names_ctx_init_not_a_class(tiny):
    with pytest.raises(ValueError, match=r"prompt\.ctx_init is too long"):
        tiny.context_init(" ".join(["photo"] * 100), 16, torch.Generator())


# --- checkpoint files only from CANDOR_CHECKPOINT_DIRS -----------------------------------------


def test_host_paths_are_refused_at_submission_by_default(client, auth):
    ds = new_dataset(client, auth)
    for spec in ("openclip:candor-tiny:/etc/hostname", "openclip:candor-tiny:file:/etc/hostname"):
        refused(submit(client, auth, ds, {"backbone": spec}), "config.backbone", "no checkpoint directory")


def test_checkpoints_only_from_listed_dirs_symlinks_and_dotdot_resolved(client, auth, tiny, tmp_path, checkpoint_dirs):
    allowed = tmp_path / "models"
    allowed.mkdir()
    ckpt = allowed / "tiny.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    (allowed / "escape").symlink_to("/etc/hostname")
    checkpoint_dirs(allowed)
    ds = new_dataset(client, auth)
    assert submit(client, auth, ds, {"backbone": f"openclip:candor-tiny:{ckpt}"}).status_code == 202
    assert submit(client, auth, ds, {"backbone": f"openclip:candor-tiny:file:{ckpt}"}).status_code == 202
    for path in (allowed / "escape", f"{allowed}/../../../etc/hostname", "/etc/hostname"):
        refused(submit(client, auth, ds, {"backbone": f"openclip:candor-tiny:{path}"}), "outside the allowed")
    refused(submit(client, auth, ds, {"backbone": "openclip:candor-tiny:file:tiny.pt"}), "must be absolute")
    refused(submit(client, auth, ds, {"backbone": f"openclip:candor-tiny:{allowed}/gone.pt"}), "does not exist")


def test_worker_enforces_checkpoint_dirs_too(tiny, tmp_path, checkpoint_dirs):
    allowed = tmp_path / "models"
    allowed.mkdir()
    torch.save(tiny.model.state_dict(), allowed / "tiny.pt")
    (allowed / "escape").symlink_to("/etc/hostname")
    checkpoint_dirs()  # the default: no directory
    with pytest.raises(BackboneUnavailable, match="no checkpoint directory"):
        registry._load_backbone("openclip:candor-tiny:/etc/hostname")
    checkpoint_dirs(allowed)
    for path in (allowed / "escape", f"{allowed}/../../../etc/hostname"):
        with pytest.raises(BackboneUnavailable, match="outside the allowed"):
            registry._load_backbone(f"openclip:candor-tiny:{path}")
    loaded = registry._load_backbone(f"openclip:candor-tiny:{allowed}/tiny.pt")
    assert "file-sha256-" in loaded.id and loaded.spec == f"openclip:candor-tiny:{allowed}/tiny.pt"
    # local use (the CLI) still takes any file
    assert load_backbone(f"openclip:candor-tiny:file:{allowed}/tiny.pt").id == loaded.id


def test_a_tag_is_never_taken_for_a_file(tmp_path, monkeypatch, tiny):
    """The spec's form decides: a relative name that happens to exist is still a tag."""
    torch.save(tiny.model.state_dict(), tmp_path / "laion2b")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert load_backbone("openclip:candor-tiny:file:../laion2b").id.startswith("openclip:candor-tiny:file-sha256-")
    with pytest.raises(BackboneUnavailable, match="unknown pretrained tag 'laion2b'"):
        load_backbone("openclip:candor-tiny:laion2b")
    with pytest.raises(BackboneUnavailable, match=r"unknown pretrained tag '\.\./laion2b'"):
        load_backbone("openclip:candor-tiny:../laion2b")


# --- presets: resolved into concrete fields at validation ---------------------------------------


def test_preset_coop_is_resolved_into_the_stored_config(client, auth):
    ds = new_dataset(client, auth)
    r = submit(client, auth, ds, {"backbone": "tiny", "preset": "coop", "train": {"epochs": 3}})
    assert r.status_code == 202, r.text
    stored = r.json()["config"]
    assert stored["preset"] == "coop"
    assert stored["train"] == stored["train"] | {
        "optimizer": "sgd",
        "lr": 0.002,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "warmup_epochs": 1,
        "lr_schedule": "cosine_epoch",
        "batch_size": 32,
        "epochs": 3,  # a field the config sets itself wins over the preset
    }
    assert stored["prompt"]["n_ctx"] == 16
    plain = submit(client, auth, ds, {"backbone": "tiny", "train": {"epochs": 3}}).json()
    assert plain["config"]["preset"] == "offline" and plain["config"]["train"]["optimizer"] == "adamw"
    assert plain["config_hash"] != r.json()["config_hash"]
    refused(submit(client, auth, ds, {"preset": "fast"}), "preset")
    for odd in ({}, [], 3):  # not a name at all: a 422 on the field, not a 500
        refused(submit(client, auth, ds, {"preset": odd}), "preset")


def test_presets_resolve_the_same_way_everywhere():
    coop = CleanConfig.model_validate({"preset": "coop"})
    assert coop.train.optimizer == "sgd" and coop.train.lr_schedule == "cosine_epoch"
    assert CleanConfig.model_validate(coop.model_dump(mode="json")) == coop  # a stored config re-validates as is
    assert CleanConfig().with_overrides(preset="coop") == coop
    assert CleanConfig().with_overrides(preset="coop", train={"lr": 0.01}).train.lr == 0.01
    assert coop.with_overrides(preset="offline") == CleanConfig()  # the defaults are the offline preset
    assert CleanConfig.model_validate({"train": {"optimizer": "sgd"}}).preset == "offline"


def test_sections_added_later_leave_the_config_hash_of_older_configs_unchanged():
    from app.ml.config import CleanConfig

    # the hashes these configs had before cross_validation and votes existed (classifier versions use them)
    assert CleanConfig().digest() == "50bb56fec5eb2d14"
    assert CleanConfig().with_overrides(train={"epochs": 3}).digest() == "dca7ef3ff5102e5c"
    assert CleanConfig().with_overrides(votes={"enabled": False}).digest() != CleanConfig().digest()
    assert CleanConfig().with_overrides(cross_validation={"folds": 5}).digest() != CleanConfig().digest()


def test_more_folds_than_items_is_422_at_submission(client, auth):
    ds = new_dataset(client, auth)  # two items
    refused(submit(client, auth, ds, {"cross_validation": {"folds": 3}}), "cross_validation.folds", "3 folds")
    assert submit(client, auth, ds, {"cross_validation": {"folds": 2}}).status_code == 202
