"""The reference Platform server conforms to docs/platform-api.yaml (schemathesis).

Schemathesis generates valid and invalid requests for every operation in the contract and
checks each answer: documented status, documented body schema and content type, no 5xx,
invalid input refused with 4xx. Faults are cleared after every case, since the fuzzed
``PUT /admin/faults`` turns them on.
"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation

from testbed.platform.launcher import PlatformServer

SPEC = Path(__file__).resolve().parents[1] / "docs" / "platform-api.yaml"
# A schema-valid PATCH may still be refused by the state rules (412, 428), which JSON
# Schema cannot express; those answers are documented, so they count as acceptance.
CONFIG = SchemathesisConfig.from_dict({
    "checks": {
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "401", "403", "404", "409", "412", "428", "429"],
        },
    },
})
schema = schemathesis.openapi.from_path(SPEC, config=CONFIG)


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_every_operation_conforms_to_the_contract(case, platform: PlatformServer) -> None:
    # Authenticate every case, except those whose headers were made invalid on purpose
    # (they test that a missing or bad Authorization header is refused).
    header = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
    negative_headers = header is not None and header.mode is GenerationMode.NEGATIVE
    auth = None if negative_headers else {"Authorization": f"Bearer {platform.token}"}
    try:
        case.call_and_validate(base_url=platform.url, headers=auth, timeout=30)
    finally:
        platform.clear_faults()
