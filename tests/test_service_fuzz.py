"""Schemathesis against the running server's own OpenAPI schema: no input gets a 5xx.

Every operation in the served /openapi.json (the audio routes with their multipart forms, the
model list, health, readiness, metrics, the admin reload) gets a bounded number of generated
requests, schema-conforming and schema-violating, sent over loopback to the shared session
server.

Why not `schemathesis.pytest.from_fixture(...).parametrize()`: with the locked pytest 9.2,
schemathesis 4.32.5's lazy loader reads `request.node._nodeid`, which pytest removed, and every
test fails with AttributeError before sending a request. The schema is only known once the
session server runs, so the tests draw cases from each operation's Hypothesis strategy
(`APIOperation.as_strategy`) and validate them with `case.call_and_validate`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.schemas import OpenApiSchema

from support.server import Server

if TYPE_CHECKING:
    from schemathesis.specs.openapi.schemas import OpenApiCase

REQUEST_TIMEOUT = 60  # seconds; generated uploads are small, a real clip takes ~2 s
MAX_EXAMPLES = 25
# Every route of the app's schema; a route added to the app must be added here to be fuzzed.
OPERATIONS = (
    "POST /v1/audio/transcriptions",
    "POST /v1/audio/translations",
    "GET /v1/models",
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "POST /admin/reload",  # the session server follows no target: 409 no_target, never a 5xx
)
WITH_INPUT = OPERATIONS[:2]  # the others take no parameters: nothing to make invalid
# Generated model ids are random strings (404 before any audio is read); half of the cases get
# a model the session server holds instead, so the upload reaches the decoder and the engine.
SERVED_MODELS = ("whisper-tiny.en", "gigaam-v3-ctc-testtiny")


@pytest.fixture(scope="module")
def api_schema(server: Server) -> OpenApiSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", timeout=10)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """Loopback only: no proxy from the environment in between."""
    with requests.Session() as http:
        http.trust_env = False
        yield http


def test_every_operation_of_the_schema_is_fuzzed(api_schema: OpenApiSchema) -> None:
    labels = {
        result.ok().label for result in api_schema.get_all_operations() if isinstance(result, Ok)
    }
    assert labels == set(OPERATIONS)


@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, GenerationMode.POSITIVE) for label in OPERATIONS]
    + [(label, GenerationMode.NEGATIVE) for label in WITH_INPUT],
)
def test_no_input_gets_a_server_error(
    api_schema: OpenApiSchema,
    server: Server,
    session: requests.Session,
    label: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in /openapi.json"
    sent = 0

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,  # nothing written into the work tree
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        model=st.one_of(st.none(), st.sampled_from(SERVED_MODELS)),
    )
    def fuzz(case: OpenApiCase, model: str | None) -> None:
        nonlocal sent
        sent += 1
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model
        case.call_and_validate(
            base_url=server.url,
            session=session,
            checks=[not_a_server_error],
            timeout=REQUEST_TIMEOUT,
        )

    fuzz()
    assert sent > 0
    assert server.process.poll() is None, server.output()[-3000:]
