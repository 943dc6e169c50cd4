"""Label Studio tokens at rest (app/labelstudio/tokens.py): sealed under CANDOR_LABELSTUDIO_TOKEN_KEYS,
keys rotated with `candor labelstudio rekey`, plain without keys, and a clear error for a token no
key opens or a setting that holds no Fernet key."""

from __future__ import annotations

import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from tests.test_verbs import committed  # noqa: F401


@pytest.fixture
def keys(monkeypatch):
    """Set CANDOR_LABELSTUDIO_TOKEN_KEYS for this test (settings read again)."""
    from app.core.settings import get_settings

    def use(*ks: str) -> None:
        monkeypatch.setenv("CANDOR_LABELSTUDIO_TOKEN_KEYS", ",".join(ks))
        get_settings.cache_clear()

    yield use
    monkeypatch.delenv("CANDOR_LABELSTUDIO_TOKEN_KEYS", raising=False)
    get_settings.cache_clear()


def test_tokens_are_sealed_under_the_first_key_and_opened_by_any(keys):
    from app.labelstudio.tokens import TokenError, seal, unseal

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys()
    assert seal("tok-1") == "tok-1" and unseal("tok-1") == "tok-1"  # no keys: as given
    keys(old)
    sealed = seal("tok-1")
    assert sealed.startswith("fernet:") and "tok-1" not in sealed and unseal(sealed) == "tok-1"
    keys(new, old)  # rotation: the new key seals, the old one still opens
    assert unseal(sealed) == "tok-1"
    assert Fernet(new).decrypt(seal("tok-1")[7:].encode()) == b"tok-1"
    keys(new)
    with pytest.raises(TokenError, match="no longer holds"):
        unseal(sealed)
    keys()
    with pytest.raises(TokenError, match="is not set"):
        unseal(sealed)


def test_a_setting_that_is_not_a_fernet_key_names_the_key(keys):
    from app.core.settings import Settings

    good = Fernet.generate_key().decode()
    with pytest.raises(ValueError, match="key 2 of CANDOR_LABELSTUDIO_TOKEN_KEYS is not a Fernet key"):
        Settings(labelstudio_token_keys=f"{good},not-a-key")
    assert Settings(labelstudio_token_keys=f" {good} ").labelstudio_token_keys == [good]


def test_rekey_seals_every_stored_token_with_the_new_first_key(committed, keys, capsys):  # noqa: F811
    from app.cli import main
    from app.core.db import session_scope
    from app.core.security import create_key
    from app.labelstudio.models import LabelStudioConnection
    from app.labelstudio.tokens import seal, unseal

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys(old)
    tenant_name = f"tokens-{uuid.uuid4().hex[:6]}"
    with session_scope() as s:
        tenant, _ = create_key(s, tenant_name)
        clf = classifier_of(s, tenant.id)
        rows = [
            LabelStudioConnection(tenant_id=tenant.id, classifier_id=clf, project="1", token="plain-token"),
            LabelStudioConnection(tenant_id=tenant.id, classifier_id=clf, project="2", token=seal("sealed-token")),
        ]
        s.add_all(rows)
        s.flush()
        ids = [r.id for r in rows]
    keys(new, old)
    assert main(["labelstudio", "rekey"]) == 0
    assert "sealed with the first key" in capsys.readouterr().err
    with session_scope() as s:
        stored = [s.scalar(select(LabelStudioConnection.token).where(LabelStudioConnection.id == i)) for i in ids]
    keys(new)  # only the new key now
    assert [unseal(t) for t in stored] == ["plain-token", "sealed-token"]
    keys()
    assert main(["labelstudio", "rekey"]) == 2
    assert "CANDOR_LABELSTUDIO_TOKEN_KEYS is not set" in capsys.readouterr().err


def classifier_of(session, tenant_id) -> uuid.UUID:
    """A classifier row of the tenant (a connection needs one): a dataset, a job and its classifier."""
    from app.classifiers.models import ClassifierRow
    from app.datasets.models import Dataset
    from app.jobs.models import Job

    ds = Dataset(tenant_id=tenant_id, name="t", classes=["a", "b"])
    session.add(ds)
    session.flush()
    job = Job(tenant_id=tenant_id, dataset_id=ds.id, config={}, config_hash="0", state="succeeded")
    session.add(job)
    session.flush()
    row = ClassifierRow(tenant_id=tenant_id, job_id=job.id, dataset_id=ds.id, version="v", backbone="tiny",
                        backbone_id="tiny", classes=["a", "b"], metrics={}, artifact=b"")  # fmt: skip
    session.add(row)
    session.flush()
    return row.id
