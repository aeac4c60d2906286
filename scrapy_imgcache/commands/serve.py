"""``scrapy imgcache-serve``: the REST service over the store this project's settings name.

The same options, checks and app as ``imgcache-server`` (docs/server.md), with the database,
files location and image limits taken from ``IMGCACHE_*`` instead of ``--db``/``--files``.
"""

from __future__ import annotations

import argparse

from . import ImgCacheCommand


class Command(ImgCacheCommand):
    needs_database = True
    creates_cache = True  # the schema, where there is no database yet

    def syntax(self) -> str:
        return "[--host 127.0.0.1] [--port 8010] [--read-key K]... [--write-key K]... [--insecure] [--public-serve]"

    def short_desc(self) -> str:
        return "Serve this project's image cache over the imgcache REST API (docs/server.md)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        from ..server.cli import add_serve_arguments

        super().add_options(parser)
        add_serve_arguments(parser.add_argument_group("imgcache-serve"))

    def execute(self, args: list[str], opts: argparse.Namespace) -> int:
        from scrapy.exceptions import UsageError

        from ..server.cli import check_options, serve
        from ..store.sql import SqlStore

        if args:
            raise UsageError(f"unexpected arguments: {' '.join(args)}", print_help=False)
        keys = check_options(opts)  # before the store is opened: a refusal creates nothing
        config = self.config()
        self.require_database(config)
        store = SqlStore.from_config(config)
        try:
            serve(store, opts, keys)
        finally:
            store.close()
        return 0
