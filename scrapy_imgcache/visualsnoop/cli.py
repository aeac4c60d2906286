"""``collections create|list|rotate-key|delete``: one implementation for both front ends.

``scrapy imgcache-collections ...`` (the project's configured store) and
``imgcache-server collections ... --db URL`` (the server's database) add these arguments
and call :func:`run`, so the two cannot drift. Only argparse is imported at the top:
Scrapy imports command modules just to list them.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .registry import Registry


def add_arguments(parser: argparse.ArgumentParser, parents: list[argparse.ArgumentParser] | None = None) -> None:
    """The four actions; ``parents`` adds options (``--db``) to each of them."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = parents or []
    create = sub.add_parser("create", parents=common, help="create a collection and print its key pair once")
    create.add_argument("name", help="the collection's name (1-100 printable characters, unique)")
    create.add_argument(
        "--bucket",
        default=None,
        help="the cache bucket it serves (default: the name, which must then be a valid bucket name); "
        "one collection per bucket",
    )
    create.add_argument("--user", default="", help="the owner label the API answers as 'user' (default '')")
    listing = sub.add_parser("list", parents=common, help="list collections (no secrets)")
    rotate = sub.add_parser(
        "rotate-key", parents=common, help="replace a collection's key pair; the old one stops working"
    )
    rotate.add_argument("name")
    delete = sub.add_parser(
        "delete", parents=common, help="delete a collection and its image ids (the images stay cached)"
    )
    delete.add_argument("name")
    for action in (create, listing, rotate, delete):
        action.add_argument("--json", action="store_true", help="print JSON (one object a line)")


def run(registry: Registry, args: argparse.Namespace) -> int:
    """Do ``args.action``; the exit code follows the imgcache commands (0 ok, 1 not found, 2 refused)."""
    from ..commands import EXIT_NOTHING, EXIT_OK, EXIT_USAGE, print_json
    from .registry import CollectionError

    out, err = sys.stdout, sys.stderr
    action = args.action
    try:
        if action == "create":
            collection, secret = registry.create(args.name, args.bucket, args.user)
        elif action == "rotate-key":
            rotated = registry.rotate_key(args.name)
            if rotated is None:
                print(f"no collection named {args.name!r}", file=err)
                return EXIT_NOTHING
            collection, secret = rotated
        elif action == "delete":
            return _delete(registry, args)
        else:
            return _list(registry, args)
    except CollectionError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
    if args.json:
        print_json({**collection.to_json(), "secret_key": secret})
    else:
        print(
            f"collection {collection.name!r} (collection_id {collection.collection_id})"
            f" over bucket {collection.bucket!r}",
            file=out,
        )
        print(f"public key: {collection.public_key}", file=out)
        print(f"secret key: {secret}", file=out)
    print(_secret_note(collection.secret_encrypted), file=err)
    return EXIT_OK


def _delete(registry: Registry, args: argparse.Namespace) -> int:
    from ..commands import EXIT_NOTHING, EXIT_OK, print_json

    deleted = registry.delete(args.name)
    if deleted is None:
        print(f"no collection named {args.name!r}", file=sys.stderr)
        return EXIT_NOTHING
    if args.json:
        print_json(deleted.to_json())
    else:
        print(f"deleted collection {deleted.name!r}; its images stay cached in bucket {deleted.bucket!r}")
    return EXIT_OK


def _list(registry: Registry, args: argparse.Namespace) -> int:
    from ..commands import EXIT_NOTHING, EXIT_OK, print_json, table

    collections = registry.list()
    if args.json:
        for c in collections:
            print_json(c.to_json())
    elif collections:
        rows = [
            (
                c.name,
                c.collection_id,
                c.bucket,
                c.user,
                c.public_key,
                "encrypted" if c.secret_encrypted else "plain",
                c.key_created_at.isoformat(timespec="seconds"),
            )
            for c in collections
        ]
        print(table(("name", "collection_id", "bucket", "user", "public_key", "secret", "key created"), rows))
    return EXIT_OK if collections else EXIT_NOTHING


def _secret_note(encrypted: bool) -> str:
    from .keys import SECRETS_KEY_ENV

    if encrypted:
        return f"The secret key is shown only now; it is stored encrypted with {SECRETS_KEY_ENV}."
    return (
        f"The secret key is shown only now. It is stored in the database as is, because {SECRETS_KEY_ENV} "
        "is not set: see docs/visualsnoop.md."
    )


# -- imgcache-server collections ---------------------------------------------------------


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    db = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --db given before "collections" (or IMGCACHE_SERVER_DB) is kept when none follows
    db.add_argument(
        "--db", default=argparse.SUPPRESS, help="SQLAlchemy URL of the cache database (env IMGCACHE_SERVER_DB)"
    )
    add_arguments(parser, [db])


def run_on_database(url: str, args: argparse.Namespace) -> int:
    """Run the parsed subcommand on the collections of the cache database at ``url``."""
    from ..store.schema import ensure_schema, make_engine
    from .registry import Registry

    engine = make_engine(url)
    try:
        ensure_schema(engine)
        return run(Registry(engine), args)
    finally:
        engine.dispose()


def run_server_command(args: argparse.Namespace) -> int:
    from ..commands import EXIT_FAILED
    from ..errors import ConfigError, StoreError

    if not getattr(args, "db", None):
        raise ConfigError("--db is required (or IMGCACHE_SERVER_DB)")
    try:
        return run_on_database(args.db, args)
    except StoreError as exc:
        print(f"imgcache-server collections: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


SERVER_SUBCOMMAND = ("manage VisualSnoop collections and their key pairs", add_server_arguments, run_server_command)
