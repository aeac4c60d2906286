"""Schema steps that can run again: each one looks before it creates.

MySQL and MariaDB commit every ``CREATE`` on its own, so a migration killed half-way leaves
some tables made and no revision recorded; the next start runs the migration again. With
these steps it completes what is missing instead of failing on "table already exists"
(PostgreSQL and SQLite roll the whole migration back, and lose nothing by looking first).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def _inspector() -> Any:
    return sa.inspect(op.get_bind())


def create_table(name: str, *columns: Any, **options: Any) -> None:
    if not _inspector().has_table(name):
        op.create_table(name, *columns, **options)


def create_index(name: str, table: str, columns: list[str], **options: Any) -> None:
    if name not in {ix["name"] for ix in _inspector().get_indexes(table)}:
        op.create_index(name, table, columns, **options)


def drop_table(name: str) -> None:
    if _inspector().has_table(name):
        op.drop_table(name)


def drop_index(name: str, table: str) -> None:
    if name in {ix["name"] for ix in _inspector().get_indexes(table)}:
        op.drop_index(name, table_name=table)


def add_column(table: str, column: sa.Column[Any]) -> None:
    if column.name not in {c["name"] for c in _inspector().get_columns(table)}:
        op.add_column(table, column)


def drop_column(table: str, name: str) -> None:
    if name in {c["name"] for c in _inspector().get_columns(table)}:
        op.drop_column(table, name)
