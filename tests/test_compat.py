"""Scrapy's version differences live in ``scrapy_imgcache/_compat.py``, decided by version number,
and each flag there agrees with the Scrapy that is installed (run on the oldest supported one
too: ``scrapy_api``)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import scrapy
from packaging.version import Version

import scrapy_imgcache._compat as _compat

pytestmark = pytest.mark.scrapy_api
PACKAGE = Path(__file__).resolve().parent.parent / "scrapy_imgcache"


def test_the_flags_follow_the_installed_scrapy_version():
    assert Version(scrapy.__version__) == _compat.SCRAPY_VERSION
    assert (Version(scrapy.__version__).release >= (2, 14)) == _compat.SCRAPY_2_14
    assert (Version(scrapy.__version__).release >= (2, 15)) == _compat.SCRAPY_2_15


def test_each_flag_names_what_this_scrapy_has():
    """The version numbers are right: what each flag promises is there exactly when it is set."""
    from scrapy.core.engine import ExecutionEngine
    from scrapy.pipelines import ItemPipelineManager

    has_2_14 = [
        hasattr(ExecutionEngine, "download_async"),
        hasattr(ExecutionEngine, "close_spider_async"),
        hasattr(ItemPipelineManager, "open_spider_async"),
        hasattr(importlib.import_module("scrapy.exceptions"), "DownloadCancelledError"),
        hasattr(importlib.import_module("scrapy.pipelines.media"), "FileException"),
    ]
    assert has_2_14 == [_compat.SCRAPY_2_14] * len(has_2_14)
    asyncio_utils = importlib.util.find_spec("scrapy.utils.asyncio")  # (no such module in 2.13)
    has_run_in_thread = asyncio_utils is not None and hasattr(
        importlib.import_module("scrapy.utils.asyncio"), "run_in_thread"
    )
    assert has_run_in_thread == _compat.SCRAPY_2_15
    assert _compat.MEDIA_AWAITS_COROUTINES == _compat.SCRAPY_2_14


def test_only_compat_knows_scrapy_versions():
    """No module probes Scrapy itself (``hasattr`` on its classes, a try/except ImportError of
    its names) or reads the bytecode of its methods: it asks ``_compat``."""
    probes = re.compile(
        r"co_code|co_names|__code__|^\s*import inspect|from inspect import|"
        r"hasattr\((engine|ItemPipelineManager|MediaPipeline|scrapy)|depends on the Scrapy version",
        re.M,
    )
    found = {
        str(path.relative_to(PACKAGE)): probes.findall(path.read_text())
        for path in PACKAGE.rglob("*.py")
        if path.name != "_compat.py"
    }
    assert {name: hits for name, hits in found.items() if hits} == {}
    assert probes.findall("    return 'ensure_awaitable' in MediaPipeline._process_request.__code__.co_names")
