"""``imgcache-server``: run the REST service over a database and a files location.

``imgcache-server --db URL --files PATH [--host H] [--port P] [keys...]`` serves; further
subcommands (``imgcache-server collections ...``) register in :data:`SUBCOMMANDS`. The same
serving options and start-up checks are shared with ``scrapy imgcache-serve``
(:func:`add_serve_arguments`, :func:`serve`), so the two ways to start it cannot drift.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..visualsnoop.cli import SERVER_SUBCOMMAND

if TYPE_CHECKING:
    from ..store.sql import SqlStore
    from .auth import ApiKeys

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8010

#: name -> (help, function adding its arguments, function running it with the parsed args)
SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "collections": SERVER_SUBCOMMAND,
}


def add_serve_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The listening and hardening options common to both ways of starting the server."""
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    parser.add_argument(
        "--read-key",
        action="append",
        default=[],
        metavar="KEY",
        help="an API key that may read (repeatable; also IMGCACHE_SERVER_READ_KEYS, comma-separated)",
    )
    parser.add_argument(
        "--write-key",
        action="append",
        default=[],
        metavar="KEY",
        help="an API key that may read, store and delete (repeatable; also IMGCACHE_SERVER_WRITE_KEYS)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without any API key",
    )
    parser.add_argument(
        "--public-serve",
        action="store_true",
        help="let /serve/{hash} answer without a key even when keys are configured (for browsers)",
    )
    parser.add_argument("--max-upload-bytes", type=int, default=None, metavar="N", help="largest image accepted")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def check_options(args: argparse.Namespace) -> ApiKeys:
    """The keys, once the serving options are known to be safe; before any store is opened."""
    from .auth import ApiKeys

    try:
        keys = ApiKeys.from_env(args.read_key, args.write_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not keys.enabled and not is_loopback(args.host) and not args.insecure:
        raise ConfigError(
            f"refusing to listen on {args.host} without API keys: the published client sends no key, "
            "so anyone who can reach the port could read, store and delete. Configure --write-key/--read-key "
            "(or IMGCACHE_SERVER_*_KEYS), or pass --insecure on a trusted network."
        )
    for name in ("max_upload_bytes", "max_pixels"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    return keys


def serve(store: SqlStore, args: argparse.Namespace, keys: ApiKeys) -> None:
    """Build the app over ``store`` and run uvicorn until stopped (``keys`` from :func:`check_options`)."""
    import uvicorn

    from ..visualsnoop.api import routers_for
    from .app import create_app

    app = create_app(
        store,
        keys=keys,
        max_upload_bytes=args.max_upload_bytes,
        public_serve=args.public_serve,
        routers=routers_for(store),
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, server_header=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgcache-server",
        description="Serve an imgcache database over the imgcache REST API (docs/server.md).",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("IMGCACHE_SERVER_DB"),
        help="SQLAlchemy URL of the cache database (env IMGCACHE_SERVER_DB)",
    )
    parser.add_argument(
        "--files",
        default=os.environ.get("IMGCACHE_SERVER_FILES"),
        help="where image bytes live: a folder or an fsspec URL (env IMGCACHE_SERVER_FILES)",
    )
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N", help="largest image accepted, in pixels")
    add_serve_arguments(parser)
    if SUBCOMMANDS:
        sub = parser.add_subparsers(dest="command", metavar="[COMMAND]", title="commands (none: serve)")
        for name, (help_text, add_arguments, _run) in SUBCOMMANDS.items():
            add_arguments(sub.add_parser(name, help=help_text))
    return parser


def run_server(args: argparse.Namespace) -> int:
    from ..hashing import DEFAULT_MAX_PIXELS, ImageLimits, Inspector
    from ..store.sql import SqlStore

    if not args.db or not args.files:
        raise ConfigError("--db and --files are required (or IMGCACHE_SERVER_DB and IMGCACHE_SERVER_FILES)")
    keys = check_options(args)
    limits = ImageLimits(
        max_bytes=args.max_upload_bytes or ImageLimits().max_bytes,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
    )
    store = SqlStore(args.db, args.files, inspector=Inspector(limits))
    try:
        serve(store, args, keys)
    finally:
        store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "command", None)
    try:
        if command:
            return SUBCOMMANDS[command][2](args)
        return run_server(args)
    except ConfigError as exc:
        parser.exit(2, f"imgcache-server: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
