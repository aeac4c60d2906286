"""Property-based fuzzing of the live server through its own OpenAPI schema (schemathesis).

Every operation of the imgcache API is called with generated valid and invalid input
against a real server process: no 5xx, statuses and content types the schema declares,
bodies that match the declared schemas, and invalid input refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from scrapy_imgcache.server.process import LiveServer
from tests.forked import imgcache_server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
#: the imgcache contract; routers mounted under /api/v1 have tests of their own
OWN_PATHS = r"^/(images|serve|health|auth|metrics|usage|admin)"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("fuzzed")
    with imgcache_server(f"sqlite:///{workdir / 'cache.sqlite3'}", workdir, "--max-upload-bytes", "300000") as server:
        yield server


OPERATIONS = [
    ("GET", "/health"),
    ("GET", "/auth/whoami"),
    ("GET", "/metrics"),
    ("GET", "/usage"),
    ("GET", "/usage/daily"),
    ("POST", "/images"),
    ("GET", "/images/meta/{content_hash}"),
    ("GET", "/images/lookup"),
    ("GET", "/images/search"),
    ("GET", "/images/similar"),
    ("POST", "/images/near"),
    ("GET", "/images/near/{content_hash}"),
    ("GET", "/images/urls/{content_hash}"),
    ("POST", "/images/urls/{content_hash}"),
    ("GET", "/images/list"),
    ("GET", "/images/browse"),
    ("GET", "/images/answer"),
    ("GET", "/images/{content_hash}"),
    ("HEAD", "/images/{content_hash}"),
    ("DELETE", "/images/{content_hash}"),
    ("GET", "/serve/{content_hash}"),
    ("POST", "/admin/gc"),
]


@pytest.fixture(scope="module")
def api_schema(fuzzed):
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")


def test_every_operation_is_fuzzed(api_schema):
    """The list below covers the schema's own operations (a new route must be added to it)."""
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert {(m, p) for m, p in found if re.match(OWN_PATHS, p)} == set(OPERATIONS)


PARAMETERLESS = {"/health", "/auth/whoami", "/metrics", "/usage"}  # nothing to make invalid


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        (method, path, mode)
        for method, path in OPERATIONS
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if not (mode is GenerationMode.NEGATIVE and path in PARAMETERLESS)
    ],
)
def test_api(api_schema, fuzzed, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def call(case) -> None:
        case.call_and_validate(base_url=fuzzed.url, checks=CHECKS, timeout=30)

    call()
    assert fuzzed.process.poll() is None


def test_schema_requires_every_field_of_the_entry_contract(fuzzed):
    import httpx

    schema = httpx.get(f"{fuzzed.url}/openapi.json").json()
    entry = schema["components"]["schemas"]["EntryOut"]
    assert set(entry["required"]) == {
        "url",
        "content_hash",
        "content_type",
        "file_size_bytes",
        "original_filename",
        "width",
        "height",
        "perceptual_hash",
        "client_name",
        "lookup_time",
        "created_at",
        "bucket",
    }
    assert entry["additionalProperties"] is True
