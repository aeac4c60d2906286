"""Alembic environment: always driven programmatically by ``scrapy_imgcache.store.schema``."""

from alembic import context

import scrapy_imgcache.visualsnoop.models  # noqa: F401  (its tables join Base.metadata)
from scrapy_imgcache.store.models import Base
from scrapy_imgcache.store.schema import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
