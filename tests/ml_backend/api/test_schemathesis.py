"""Schemathesis against the served OpenAPI schema (issue 14, finding 10), in process (ASGI), bounded.

Every operation of ``/openapi.json`` gets up to ``SCHEMATHESIS_EXAMPLES`` (default 20) generated requests
with valid data, and as many with invalid bodies where there is a body (hypothesis, derandomized: the same requests every run); each answer must not be a 5xx, must use a status
code the schema documents for that operation, and a content type it documents. The number of requests
sent is printed at the end of the module (``-s``).

schemathesis's own pytest integration (``schemathesis.pytest.from_fixture``) does not run under pytest 9
(``'Function' object has no attribute '_nodeid'``), so each operation is one parametrized test that draws
cases from ``operation.as_strategy()`` with hypothesis directly.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    status_code_conformance,
)

from ml_backend.api.app import create_app
from ml_backend.settings import Settings

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "20"))
SENT: Counter = Counter()


def _app(model_dir, redis_url: str):
    return create_app(Settings(model_dir=model_dir, model_arch="tiny-cnn", image_size=16, redis_url=redis_url,
                               queue_name="robustar-schemathesis", predict_parts=(), fetch_timeout=2.0))


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """(path, method, mode) of every documented operation: valid data for all, invalid data for those with a
    request body (a string path parameter has no invalid value). The schema does not depend on settings."""
    spec = _app("/nonexistent", "redis://127.0.0.1:1/0").openapi()
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append((path, method.upper(), GenerationMode.POSITIVE))
            if "requestBody" in op:
                out.append((path, method.upper(), GenerationMode.NEGATIVE))
    return sorted(out, key=lambda case: (case[0], case[1], case[2].value))  # FastAPI lists a route's methods
    # from a set: sorted, every pytest-xdist worker collects the same tests in the same order


@pytest.fixture(scope="module")
def api_schema(redis_dbs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    with redis_dbs.lease() as url:
        yield schemathesis.openapi.from_asgi("/openapi.json", _app(tmp / "models", url))
    total = sum(SENT.values())
    print(f"\n[schemathesis] {total} generated requests over {len(SENT)} operation x mode pairs "
          f"(at most {EXAMPLES} examples each)")


@pytest.mark.parametrize("path,method,mode", _cases(), ids=lambda v: getattr(v, "value", v))
def test_operation_conforms_to_its_schema(api_schema, path, method, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        SENT[f"{method} {path} {mode.value}"] += 1
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance])

    run()
