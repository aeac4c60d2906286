"""What the ``scrapy imgcache-*`` commands share: settings → store, errors → exit codes, output.

Scrapy imports every command module to list them in ``scrapy --help``, so this module and
the command modules import only the standard library and Scrapy at the top; Pillow,
SQLAlchemy and the store are imported inside ``run()``.

Exit codes, the same for every command: 0 done (something found), 1 nothing found,
2 usage or configuration error, 3 the store, a fetched URL or a file failed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

if TYPE_CHECKING:
    from ..config import ImgCacheConfig
    from ..store.base import Entry, Store
    from .sheet import Card

EXIT_OK = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
URL_WIDTH = 60

T = TypeVar("T")


class CommandFailed(Exception):
    """A one-line reason to stop with :data:`EXIT_FAILED` (no traceback)."""


class ImgCacheCommand(ScrapyCommand):
    """Base of the imgcache commands: a project's settings, no crawler, no log noise."""

    requires_project = True
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}
    #: the name it is registered under in pyproject.toml, for its error messages;
    #: ``imgcache-<module name>`` unless a subclass says otherwise
    name: ClassVar[str] = "imgcache"
    #: the command needs the cache's database itself (a remote service will not do)
    needs_database: ClassVar[bool] = False
    #: the command may create a cache where there is none (the others only look at one), so
    #: it refuses to run outside a project unless told where the cache is
    creates_cache: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = "imgcache-" + cls.__module__.rsplit(".", 1)[-1]

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        self._parser = parser  # (subclasses add theirs to the same parser after this)

    def process_options(self, args: list[str], opts: argparse.Namespace) -> None:
        super().process_options(args, opts)
        refuse_unknown_options(self._parser, args)

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from ..errors import ConfigError, StoreError

        try:
            self.exitcode = self.execute(args, opts)
            sys.stdout.flush()  # here, so that a closed pipe is caught below
        except ConfigError as exc:
            raise UsageError(str(exc), print_help=False) from None
        except BrokenPipeError:  # the reader went away (``| head``): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (StoreError, CommandFailed, SQLAlchemyError, OSError) as exc:
            # the database, the files or the network failed: a reason, not a traceback
            reason = _one_line(getattr(exc, "orig", None) or exc)
            print(f"{self.name}: error: {reason}", file=sys.stderr)
            self.exitcode = EXIT_FAILED

    @abstractmethod
    def execute(self, args: list[str], opts: argparse.Namespace) -> int:
        """Do the work; return the exit code."""

    def config(self) -> ImgCacheConfig:
        from ..config import ImgCacheConfig, unknown_settings

        for warning in unknown_settings(self.settings):
            print(f"{self.name}: warning: {warning}", file=sys.stderr)
        config = ImgCacheConfig.from_settings(self.settings)
        if self.creates_cache:
            self._refuse_outside_a_project(config)
        return config

    def _refuse_outside_a_project(self, config: ImgCacheConfig) -> None:
        """A usage error when the cache would be made in ``./.scrapy`` of a folder that is no
        project: ``imgcache-import DIR`` run in the wrong folder once left a new cache there.
        Naming the cache (``-s IMGCACHE_URL=…``) says where it goes, project or not."""
        from scrapy.utils.project import inside_project

        from ..config import DEFAULT_FILES_NAME, project_data_path

        assert self.settings is not None  # set by Scrapy before anything runs
        if inside_project():
            return
        default_files = project_data_path(DEFAULT_FILES_NAME)
        files_defaulted = not self.settings.get("IMGCACHE_FILES_STORE") and config.files_store == default_files
        if config.url_is_default or files_defaulted:
            raise UsageError(
                f"{self.name}: there is no Scrapy project here (no scrapy.cfg in {os.getcwd()} or above), so "
                f"the cache would be made in {project_data_path('')}; run it in your project, or name the cache "
                "with -s IMGCACHE_URL=… (and -s IMGCACHE_FILES_STORE=… unless it is a SQLite file)",
                print_help=False,
            )

    def search_scope(self, opts: argparse.Namespace) -> tuple[ImgCacheConfig, str, int]:
        """The settings, and the bucket and distance of ``add_search_options``, checked."""
        config = self.config()
        return config, bucket_of(opts, config), distance_of(opts, config)

    def require_database(self, config: ImgCacheConfig) -> None:
        """A one-line usage error when this command needs the cache's database itself."""
        if self.needs_database and config.is_remote:
            raise UsageError(
                f"{self.name} needs the cache's database itself, but IMGCACHE_URL names a remote "
                f"imgcache service ({config.url}); run it where the service's database is configured",
                print_help=False,
            )

    def open_store(self, config: ImgCacheConfig) -> Store:
        """The configured store (a database, or a remote service where the command can use one)."""
        from ..store import open_store

        self.require_database(config)
        try:
            return open_store(config, create=self.creates_cache)
        except ImportError as exc:
            raise CommandFailed(f"cannot open the store {config.url}: {exc}") from exc


def refuse_unknown_options(parser: argparse.ArgumentParser, args: list[str]) -> None:
    """A usage error naming the first unknown option in ``args``; drops the ``--`` that ends them.

    Scrapy parses a command's options with ``parse_known_args`` and hands the rest over as
    arguments, so ``imgcache-gc --dryrun`` ran the real gc and ``imgcache-stats --bucket x``
    showed every bucket. Anything left that looks like an option (not ``-`` for stdin, not a
    negative number) was not one of this command's; after ``--`` everything is an argument.
    """
    for i, arg in enumerate(args):
        if arg == "--":
            del args[i]  # the same list reaches run(): its arguments, as the user meant them
            return
        if arg.startswith("-") and arg != "-" and not _NEGATIVE_NUMBER.match(arg):
            option = arg.split("=", 1)[0]
            closest = difflib.get_close_matches(option, sorted(_option_strings(parser)), n=1)
            hint = f" (did you mean {closest[0]}?)" if closest else ""
            raise UsageError(f"unrecognized option {option}{hint}", print_help=False)


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # what argparse itself takes for an argument


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of ``parser`` and of its subcommands (``imgcache-collections create``)."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def add_bucket_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--bucket",
        metavar="NAME",
        default=None,
        help=f"the bucket to {what} (default IMGCACHE_BUCKET, which is '' unless set)",
    )


def add_search_options(parser: argparse.ArgumentParser, bucket_what: str, limit: int | None, html_what: str) -> None:
    """The options of the commands that look for look-alikes (similar, dupes)."""
    parser.add_argument(
        "--max-distance",
        metavar="N",
        type=int,
        default=None,
        help="Hamming distance in bits (0-32) at which two perceptual hashes count as the same "
        "picture (default IMGCACHE_SIMILARITY_THRESHOLD, which is 8 unless set)",
    )
    add_bucket_option(parser, bucket_what)
    shown = f"{limit}" if limit else "all"
    parser.add_argument(
        "--limit", metavar="N", type=positive_int, default=limit, help=f"show at most N results (default {shown})"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object a line, for scripts")
    parser.add_argument("--html", metavar="FILE", default=None, help=f"also write {html_what} to FILE")


def bucket_of(opts: argparse.Namespace, config: ImgCacheConfig) -> str:
    from ..store.base import validate_bucket

    return _usable(validate_bucket, config.bucket if opts.bucket is None else opts.bucket)


def distance_of(opts: argparse.Namespace, config: ImgCacheConfig) -> int:
    from ..store.base import validate_distance

    return _usable(validate_distance, config.similarity_threshold if opts.max_distance is None else opts.max_distance)


def _usable(check: Callable[[T], T], value: T) -> T:
    """``check(value)``, its ValueError turned into a one-line usage error (exit 2)."""
    try:
        return check(value)
    except ValueError as exc:
        raise UsageError(str(exc), print_help=False) from None


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: at least 1 is expected")
    return value


def human_size(size: float) -> str:
    """``1536`` → ``1.5 KiB``: sizes as people read them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def dimensions(entry: Entry) -> str:
    return f"{entry.width}x{entry.height}" if entry.width and entry.height else "?"


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[int] = ()) -> str:
    """A plain text table; columns listed in ``right`` are right-aligned (numbers)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = set(right)
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in align else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


@dataclass(frozen=True)
class Sighting:
    """An image and every URL record of it, oldest first: what the reports show per image."""

    entry: Entry
    records: Sequence[Entry]

    @classmethod
    def of(cls, store: Store, entry: Entry) -> Sighting:
        records = store.urls(entry.content_hash, entry.bucket) or [entry]
        return cls(entry, sorted(records, key=lambda r: r.lookup_time))

    @property
    def urls(self) -> list[str]:
        return list(dict.fromkeys(r.url for r in self.records))

    @property
    def clients(self) -> list[str]:
        return sorted({r.client_name for r in self.records})

    def details(self) -> list[str]:
        e = self.entry
        return [
            f"{human_size(e.file_size_bytes)}, {dimensions(e)}, {e.content_type}",
            f"content hash {e.content_hash[:16]}…",
            f"{len(self.urls)} URL(s), seen by {', '.join(self.clients)}",
        ]

    def card(self, store: Store, title: str) -> Card:
        from .sheet import Card

        data = store.get_bytes(self.entry.content_hash, self.entry.bucket)
        return Card(data, title, self.details(), self.urls)

    def to_json(self, **extra: Any) -> dict[str, Any]:
        data = self.entry.to_json()
        data.pop("hamming_distance", None)  # the caller's ``distance`` says what it is measured from
        data.pop("match_distance", None)
        data.update(urls=self.urls, clients=self.clients, **extra)
        return data


def sightings_table(rows: Iterable[tuple[int, Sighting]]) -> str:
    """Images as a table: a distance and how it matched, then what the image is and where it was seen."""
    out = []
    for dist, s in rows:
        first = s.urls[0] if s.urls else ""
        if len(first) > URL_WIDTH:
            first = first[: URL_WIDTH - 1] + "…"
        e = s.entry
        size = human_size(e.file_size_bytes)
        out.append((dist, e.match or "-", e.content_hash[:12], dimensions(e), size, len(s.urls), len(s.clients), first))
    columns = ("DIST", "MATCH", "HASH", "DIMENSIONS", "SIZE", "URLS", "SPIDERS", "FIRST URL")
    return table(columns, out, right=(0, 4, 5, 6))


def found_distance(entry: Entry) -> int:
    """The distance a search result is listed with: that of the hash that found it (robust
    search's ``match_distance``; the pHashes' ``hamming_distance`` when the pHash alone decided)."""
    found = entry.match_distance if entry.match_distance is not None else entry.hamming_distance
    return found or 0


def match_title(distance: int, entry: Entry) -> str:
    """A match's caption on the HTML pages: how it matched (robust search) and its distance."""
    return f"{entry.match}, distance {distance}" if entry.match else f"distance {distance}"


def print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str))


def progress(items: Iterable[T], total: int | None, desc: str) -> Iterator[T]:
    """A tqdm bar on stderr when tqdm (the ``cli`` extra) is installed and stderr is a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield from items
        return
    yield from tqdm(items, total=total, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
