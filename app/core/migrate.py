"""Apply Alembic migrations programmatically (service start, embedded mode, tests)."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config

# The migrations ship inside the package, so an installed wheel migrates without the source tree.
MIGRATIONS = files("app.migrations")


def alembic_config(url: str | None = None, connection=None) -> Config:
    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["configure_logger"] = False
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str | None = None, connection=None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url, connection), revision)


def downgrade(url: str | None = None, connection=None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url, connection), revision)
