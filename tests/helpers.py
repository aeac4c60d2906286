"""What tests of several modules share: test images, the test web site, real databases, real
crawls and processes. Fixtures stay in the conftest files; the functions they use live here."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import multiprocessing
import os
import struct
import subprocess
import traceback
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import Engine, create_engine, text

# the demo's reproducible photographs: the tests import these from here (named one by one, so
# a name the demo adds or drops shows here, not as a test's NameError)
from example_project.photos import PHOTO_NAMES as PHOTO_NAMES
from example_project.photos import bar_chart as bar_chart
from example_project.photos import distinct_images, encode
from example_project.photos import distinct_jpegs as distinct_jpegs
from example_project.photos import near_duplicates as near_duplicates
from example_project.photos import noise_bytes as noise_bytes
from example_project.photos import photo as photo
from example_project.photos import png_bomb as png_bomb
from example_project.photos import solid as solid
from example_project.webserver import Route, Site  # noqa: F401 - the test web site
from scrapy_imgcache.store.blobs import OWNER_KEY
from tests.forked import scrapy_process

# -- images --------------------------------------------------------------------------------

#: every pixel mode an image file can decode to
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F")
FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF")


def in_mode(img: Image.Image, mode: str, transparent: bool = False) -> Image.Image:
    """``img`` converted to ``mode``; ``transparent`` gives a P image a transparent colour."""
    if mode == "PA":
        return img.convert("P").convert("PA")
    if mode in ("I;16", "I;16B"):
        return img.convert("L").convert("I").point(lambda v: v * 200).convert(mode)
    out = img.convert(mode)
    if transparent and mode == "P":
        out.info["transparency"] = 0
    return out


def encoded_in_mode(img: Image.Image, mode: str, fmt: str, transparent: bool = False) -> bytes | None:
    """The file bytes of ``img`` in ``mode`` written as ``fmt``, or None where Pillow cannot write it."""
    buf = io.BytesIO()
    try:
        in_mode(img, mode, transparent).save(buf, fmt)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return buf.getvalue()


def every_mode_and_format(img: Image.Image) -> dict[tuple[str, str], bytes]:
    """``img`` in each (mode, format) pair Pillow can write, with a transparent P image too."""
    out: dict[tuple[str, str], bytes] = {}
    for mode in MODES:
        for fmt in FORMATS:
            data = encoded_in_mode(img, mode, fmt)
            if data is not None:
                out[mode, fmt] = data
    for fmt in ("PNG", "GIF"):
        data = encoded_in_mode(img, "P", fmt, transparent=True)
        if data is not None:
            out["P+transparency", fmt] = data
    return out


def png_header_only(width: int, height: int) -> bytes:
    """A ~60-byte PNG claiming ``width`` x ``height``: a header and one pixel row's worth of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def tiny_psd() -> bytes:
    """A valid 2x2 greyscale Photoshop file (Pillow reads PSD but cannot write it)."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 1, 2, 2, 8, 1)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers
    return header + sections + struct.pack(">H", 0) + bytes([0, 64, 128, 255])


def bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, "PNG")  # 100 Mpx that compress to ~100 KB
    return buf.getvalue()


_unique = itertools.count()
_POOL: list[Image.Image] = []


def fresh_jpegs(n: int) -> list[bytes]:
    """Photos no other test of the session uses, so tests can share the default bucket."""
    if not _POOL:
        _POOL.extend(distinct_images(120, size=(160, 120)))
    return [encode(_POOL[next(_unique) % len(_POOL)]) for _ in range(n)]


def fresh_url(name: str = "img") -> str:
    return f"https://example.com/{uuid.uuid4().hex}/{name}.jpg"


def blob_files(folder: Path) -> list[Path]:
    """The files a local blob store holds, its ownership marker aside."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != OWNER_KEY)


# -- databases -----------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("IMGCACHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("IMGCACHE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def unreachable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(message + " (CI=true: the database servers must be running)")
    pytest.skip(message)


@contextlib.contextmanager
def scratch(admin_url: str, what: str, create: str, drop: list[str], **engine_options: Any) -> Iterator[Engine]:
    """Run ``create`` (a schema or database of the test's own), yield the admin engine, then ``drop``."""
    try:
        admin = create_engine(admin_url, **engine_options)
        with admin.connect() as conn:
            conn.execute(text(create))
            conn.commit()
    except Exception as exc:  # noqa: BLE001 - any connection failure
        unreachable(what, exc)
    try:
        yield admin
    finally:
        with admin.connect() as conn:
            for statement in drop:
                conn.execute(text(statement))
            conn.commit()
        admin.dispose()


def postgres_database() -> Iterator[str]:
    name = f"imgcache_t{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    with scratch(
        POSTGRES_URL,
        "PostgreSQL",
        f"CREATE SCHEMA {name}",
        [f"DROP SCHEMA {name} CASCADE"],
        isolation_level="AUTOCOMMIT",
    ):
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{name}"


def mysql_database() -> Iterator[str]:
    name = f"imgcache_t{uuid.uuid4().hex[:12]}"
    base = MYSQL_URL.rsplit("/", 1)[0]
    with scratch(
        MYSQL_URL, "MariaDB/MySQL", f"CREATE DATABASE {name} CHARACTER SET utf8mb4", [f"DROP DATABASE {name}"]
    ):
        yield f"{base}/{name}?charset=utf8mb4"


#: one database of each kind, for tests parametrised over them
DATABASES = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


@contextlib.contextmanager
def database_url(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh database of ``kind`` (a SQLite file, a PostgreSQL schema, a MariaDB database)."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'cache.sqlite3'}"
        return
    urls = postgres_database() if kind == "postgresql" else mysql_database()
    try:
        yield next(urls)
    finally:
        urls.close()  # drops the schema or database


# -- crawls --------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
PLAIN_REACTOR = "twisted.internet.epollreactor.EPollReactor"


@dataclass
class Crawl:
    items: list[dict[str, Any]]
    stats: dict[str, Any]
    returncode: int
    log: str

    def stat(self, key: str) -> int:
        return int(self.stats.get(f"imgcache/{key}", 0))

    @property
    def images(self) -> list[dict[str, Any]]:
        return [img for item in self.items for img in item.get("images", [])]


def make_project(root: Path, settings: dict[str, Any]) -> Path:
    """A Scrapy project folder whose spiders are tests/crawl_spiders.py."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "scrapy.cfg").write_text("[settings]\ndefault = projsettings\n")
    base: dict[str, Any] = {
        "SPIDER_MODULES": ["tests.crawl_spiders"],
        "BOT_NAME": "imgcachetest",
        "ROBOTSTXT_OBEY": False,
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": False,
        "EXTENSIONS": {"tests.crawl_spiders.ReactorAudit": 0, "example_project.imgdemo.extensions.StatsToFile": 1000},
        "ADDONS": {"scrapy_imgcache.Addon": 0},
        # one engine worker: every crawl still takes the process path, at half the start-up
        # CPU of the default's two (a worker's imports and store cost ~1 s of CPU; the suite
        # runs a few hundred crawls). The default, a worker a core, is what
        # tests/test_crawl_processes.py and tests/test_engine.py run.
        "IMGCACHE_HASH_PROCESSES": 1,
    }
    base.update(settings)
    lines = [f"{k} = {v!r}" for k, v in base.items()]
    (root / "projsettings.py").write_text("\n".join(lines) + "\n")
    return root


def start_crawl(project: Path, spider: str, *args: str, **spider_args: str) -> tuple[Any, Path, Path]:
    run = uuid.uuid4().hex[:8]
    items = project / f"items-{run}.jsonl"
    stats = project / f"stats-{run}.json"
    argv = ["crawl", spider, "-O", f"{items}:jsonlines", "-s", f"IMGDEMO_STATS_FILE={stats}"]
    for k, v in spider_args.items():
        argv += ["-a", f"{k}={v}"]
    argv += list(args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(project)])}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    proc = scrapy_process(argv, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, items, stats


def finish_crawl(proc: Any, items: Path, stats: Path, timeout: float = 180) -> Crawl:
    out, _ = proc.communicate(timeout=timeout)
    return crawl_result(proc.returncode, items, stats, out)


def crawl_result(returncode: int, items: Path, stats: Path, log: str) -> Crawl:
    """A finished crawl: its items and stats as it wrote them, and its log."""
    loaded = [json.loads(line) for line in items.read_text().splitlines()] if items.exists() else []
    st = json.loads(stats.read_text()) if stats.exists() else {}
    return Crawl(loaded, st, returncode, log)


def crawl(project: Path, spider: str, *args: str, **spider_args: str) -> Crawl:
    return finish_crawl(*start_crawl(project, spider, *args, **spider_args))


def start_up_error(result: Crawl, site: Site) -> str:
    """What a crawl that cannot use its cache must show: one ERROR line (returned), no traceback,
    no other component's error, not a single request, and the finish reason saying why."""
    errors = [line for line in result.log.splitlines() if " ERROR: " in line or " CRITICAL: " in line]
    assert len(errors) == 1, result.log[-4000:]
    for noise in ("Traceback", "Task exception", "Error caught on signal handler"):
        assert noise not in result.log, noise
    assert result.stats["finish_reason"] == "imgcache_unavailable"
    assert site.hits["/p"] == 0 and result.items == []
    return errors[0]


def cache_settings(tmp_path: Path, **extra: object) -> dict[str, object]:
    """A crawl's settings with its cache in ``tmp_path`` (cache.sqlite3, files/)."""
    return {
        "IMGCACHE_URL": f"sqlite:///{tmp_path / 'cache.sqlite3'}",
        "IMGCACHE_FILES_STORE": str(tmp_path / "files"),
        **extra,
    }


def open_cache(tmp_path: Path, url: str | None = None) -> Any:
    """The store of :func:`cache_settings`, opened in this process."""
    from scrapy_imgcache.store.sql import SqlStore

    return SqlStore(url or f"sqlite:///{tmp_path / 'cache.sqlite3'}", str(tmp_path / "files"))


# -- processes -----------------------------------------------------------------------------

#: one operation: ("open",) | ("put", data, url) | ("delete", content_hash) | ("blob", root, key, data, times)
Op = tuple[Any, ...]


def _work(db_url: str | None, files: str, ops: list[Op], barrier: Any, errors: Any) -> None:
    try:
        barrier.wait(timeout=120)
        store = None
        if db_url is not None:
            from scrapy_imgcache.store.sql import SqlStore

            store = SqlStore(db_url, files)
        for op in ops:
            if op[0] == "put":
                store.put(op[1], url=op[2], client_name="proc")
            elif op[0] == "delete":
                store.delete(op[1])
            elif op[0] == "blob":
                from scrapy_imgcache.store.blobs import LocalBlobStore

                blobs = LocalBlobStore(op[1])
                for _ in range(op[4]):
                    blobs.put(op[2], op[3])
        if store is not None:
            store.close()
    except BaseException:  # noqa: BLE001 - every failure goes back to the test
        errors.put(traceback.format_exc())


def run_processes(db_url: str | None, files: str, per_process: list[list[Op]]) -> None:
    """One spawned process per ops list, released together; fails with any process's traceback."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(per_process))
    errors = ctx.Queue()
    procs = [ctx.Process(target=_work, args=(db_url, files, ops, barrier, errors)) for ops in per_process]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    found = []
    while not errors.empty():
        found.append(errors.get())
    codes = [p.exitcode for p in procs]
    assert not found, "\n".join(found)
    assert codes == [0] * len(procs), codes


# -- our worker processes ------------------------------------------------------------------

#: in the command line of every worker process (scrapy_imgcache.processes): the engine's, and
#: the hashing workers of imgcache-import
WORKER_FACTORIES = ("scrapy_imgcache.engine.worker:serve", "scrapy_imgcache.workers:hasher")

#: a sitecustomize that makes a hashing worker's interpreter die (exit status 3) or hang at
#: start, as the environment variable says: a real start-up failure, in the real interpreter
_BROKEN_START = """
import os, sys, time
if any(factory in sys.argv for factory in {factories!r}):
    if os.environ.get("IMGCACHE_TEST_WORKER_START") == "die":
        os._exit(3)
    if os.environ.get("IMGCACHE_TEST_WORKER_START") == "hang":
        open(os.path.join(os.path.dirname(__file__), f"hung-{{os.getpid()}}"), "w").close()
        time.sleep(600)
"""


def broken_worker_start(folder: Path, how: str) -> dict[str, str]:
    """The environment under which hashing workers (of this process, or of a crawl started
    with it) ``how`` ("die" or "hang") at start; nothing else is affected. A hanging worker
    leaves a file ``hung-PID`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(_BROKEN_START.format(factories=WORKER_FACTORIES))
    path = os.pathsep.join(p for p in [str(folder), os.environ.get("PYTHONPATH", "")] if p)
    return {"PYTHONPATH": path, "IMGCACHE_TEST_WORKER_START": how}


def children_of(pid: int) -> list[int]:
    """The processes process ``pid`` has started, from any of its threads (Linux /proc)."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(k) for k in fh.read().split()]
    return kids


def worker_processes_of(pid: int) -> list[int]:
    """The worker processes process ``pid`` has started."""
    return [k for k in children_of(pid) if is_worker_process(k)]


def running(pid: int) -> bool:
    """Process ``pid`` runs (it is not gone, nor a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def is_worker_process(pid: int) -> bool:
    """``pid`` is one of our worker processes, running."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
        return any(f.encode() in cmdline for f in WORKER_FACTORIES) and running(pid)
    except OSError:
        return False


def wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    """Poll ``condition()`` until it is true; a hang guard, not a timing assertion."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {timeout} s for {what}")
        time.sleep(0.05)


# -- object storage and FTP servers ----------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, what: str, timeout: float = 30) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not start")


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 in front of a real server (a database), that an outage cuts:
    :meth:`down` resets every open connection (RST) and resets each new one as it is accepted,
    until :meth:`up`. It runs its own asyncio loop in a thread."""

    def __init__(self, target_port: int) -> None:
        import asyncio
        import threading

        self.target_port = target_port
        self.port = 0
        self.is_down = False
        #: connections reset while down
        self.refused = 0
        self._open: set[Any] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> TcpProxy:
        import asyncio

        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def down(self) -> None:
        self._call(self._cut())

    def up(self) -> None:
        self._call(self._restore())

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    def _call(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    async def _cut(self) -> None:
        self.is_down = True
        for writer in list(self._open):
            _reset(writer)

    async def _restore(self) -> None:
        self.is_down = False

    async def _close(self) -> None:
        await self._cut()
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader: Any, writer: Any) -> None:
        import asyncio

        if self.is_down:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(writer)
            return
        pair = {writer, up_writer}
        self._open |= pair
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._open -= pair


async def _pipe(reader: Any, writer: Any) -> None:
    """Bytes one way until either side goes; then both ends close."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:  # reset: by the other end, or by an outage
        pass
    finally:
        writer.close()


def _reset(writer: Any) -> None:
    """Close with a RST (SO_LINGER 0), as a server that dies or a firewall does."""
    import socket
    import struct

    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class S3Bucket:
    """A bucket on the test S3 server, and how Scrapy's settings and fsspec reach it."""

    endpoint: str
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
        }

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION_NAME": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1",
        )  # fmt: skip

    def keys(self, prefix: str = "") -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.name, Prefix=prefix)
        return sorted(o["Key"] for o in listed.get("Contents", []))


@dataclass
class FtpServer:
    """A real FTP server (pyftpdlib) on 127.0.0.1 serving ``root`` to user/secret."""

    root: Path
    port: int
    server: Any

    def url(self, path: str = "", credentials: bool = False) -> str:
        auth = "user:secret@" if credentials else ""
        return f"ftp://{auth}127.0.0.1:{self.port}/{path}"

    def stop(self) -> None:
        self.server.close_all()


def start_ftp_server(root: Path, idle_timeout: float = 300) -> FtpServer:
    """``idle_timeout``: seconds after which the server drops a quiet client, as real ones do."""
    import threading

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import ThreadedFTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user("user", "secret", str(root), perm="elradfmwMT")
    handler = type(
        "Handler", (FTPHandler,), {"authorizer": authorizer, "banner": "imgcache tests", "timeout": idle_timeout}
    )
    # pyftpdlib shares one IO loop and one exit flag among all servers of a process, so a
    # test's stopped server would stop the next test's; each gets its own
    server = ThreadedFTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())
    server._exit = threading.Event()
    threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True).start()
    return FtpServer(root, server.socket.getsockname()[1], server)


def damaged_variants(data: bytes, seeds: range) -> list[bytes]:
    """Reproducible damage: truncated at a random point, or one byte flipped (as a fuzzer would)."""
    import random

    out = []
    for seed in seeds:
        rng = random.Random(seed)
        if seed % 2:
            out.append(data[: rng.randrange(len(data))])
        else:
            at = rng.randrange(len(data))
            out.append(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
    return out
