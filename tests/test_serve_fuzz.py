"""The server against its own /openapi.json: schemathesis sends generated requests (valid and not) to every route.

Each answer must be no server error (5xx), carry a status the route documents, and a
body and content type that match what is documented for that status (the one error
shape for every refusal); methods a path does not take get 405 with a true ``Allow``.
Bounded and derandomized, so a run is quick and repeatable. The app is served in
process (ASGI) over a tiny Llama with two adapters, so completions really run.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from splice.serve import Engine, create_app

from serving import char_tokenizer, decoder, decoder_app

# The operations to test come from the schema, which does not depend on the model: read it from a bare app.
schema = schemathesis.openapi.from_dict(create_app(Engine(decoder(0), char_tokenizer())).openapi())


@pytest.fixture
def server(tmp_path):
    """A fresh server for each operation: schemathesis ends an app's lifespan after each test, and a stopped
    engine does not start again."""
    app, _ = decoder_app(tmp_path, max_wait_ms=1)
    return app


@schema.parametrize()
@settings(max_examples=8, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented(case, server):
    # A request valid by the schema may still be refused with a documented 400 for what only the running
    # server knows (an adapter without a head, a prompt longer than the model takes): that check is left out.
    case.call_and_validate(app=server, excluded_checks=[positive_data_acceptance])
