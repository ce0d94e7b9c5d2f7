"""Alembic environment: runs on the connection `storage.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from storage.models import Base

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=config.get_main_option("version_table") or "automl_alembic_version",
    include_name=lambda name, type_, _parent: type_ != "table" or str(name).startswith("automl_"),
)
with context.begin_transaction():
    context.run_migrations()
