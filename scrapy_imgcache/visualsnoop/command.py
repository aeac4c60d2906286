"""``scrapy imgcache-collections create|list|rotate-key|delete``: VisualSnoop collections of this project's cache."""

from __future__ import annotations

import argparse

from ..commands import ImgCacheCommand
from .cli import add_arguments


class Command(ImgCacheCommand):
    needs_database = True
    creates_cache = True  # the schema, where there is no database yet

    def syntax(self) -> str:
        return (
            "create NAME [--bucket B] [--user LABEL] [--json] | list [--json] | rotate-key NAME [--json] | delete NAME"
        )

    def short_desc(self) -> str:
        return "Create, list, re-key and delete VisualSnoop collections (docs/visualsnoop.md)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        add_arguments(parser)

    def execute(self, args: list[str], opts: argparse.Namespace) -> int:
        from scrapy.exceptions import UsageError

        from .cli import run_on_database

        if args:
            raise UsageError(f"unexpected arguments: {' '.join(args)}", print_help=False)
        config = self.config()
        self.require_database(config)
        return run_on_database(config.url, opts)
