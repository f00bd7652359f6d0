"""Suite-wide fixtures.

* Real services come from fixture plugins: `tests.fixtures.kube` (a kube-apiserver) and
  `tests.fixtures.platform` (the reference Platform server). They fail, never skip, when
  their service cannot be started.
* Every async test must leave no task running behind it (as kopf's conftest and
  client-go's goleak insist): a leaked task is a shutdown bug.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

pytest_plugins = ["tests.fixtures.kube", "tests.fixtures.platform", "tests.fixtures.realnode"]


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    # Give tasks cancelled during teardown one loop turn to finish unwinding.
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done()
              and t is not asyncio.current_task()]
    if leaked:
        for task in leaked:
            task.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        pytest.fail(f"test left {len(leaked)} task(s) running: {[t.get_name() for t in leaked]}")
