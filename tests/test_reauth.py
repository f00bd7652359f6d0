"""sniffer.reauth: a 401 is retried once, and only when the credentials were renewed."""

from __future__ import annotations

import pytest

from sniffer.reauth import retry_once_unauthorized


class Server:
    """Answers the statuses given, in order; counts the attempts and the renewals."""

    def __init__(self, *statuses: int, renewed: bool = True) -> None:
        self.statuses = list(statuses)
        self.attempts = 0
        self.renewals = 0
        self.renewed = renewed

    async def attempt(self) -> int:
        self.attempts += 1
        return self.statuses.pop(0)

    async def renew(self) -> bool:
        self.renewals += 1
        return self.renewed


async def _call(server: Server) -> int:
    return await retry_once_unauthorized(server.attempt, lambda s: s == 401, server.renew)


async def test_a_success_is_returned_without_renewing() -> None:
    server = Server(200)
    assert await _call(server) == 200
    assert (server.attempts, server.renewals) == (1, 0)


async def test_a_401_renews_and_tries_once_more() -> None:
    server = Server(401, 200)
    assert await _call(server) == 200
    assert (server.attempts, server.renewals) == (2, 1)


async def test_a_second_401_is_returned_not_retried_again() -> None:
    server = Server(401, 401, 200)
    assert await _call(server) == 401
    assert (server.attempts, server.renewals) == (2, 1)


async def test_credentials_that_did_not_change_are_not_tried_again() -> None:
    server = Server(401, 200, renewed=False)
    assert await _call(server) == 401
    assert (server.attempts, server.renewals) == (1, 1)


async def test_other_refusals_are_returned_at_once() -> None:
    server = Server(403, 200)
    assert await _call(server) == 403
    assert (server.attempts, server.renewals) == (1, 0)


async def test_an_error_while_renewing_propagates() -> None:
    class Broken(Server):
        async def renew(self) -> bool:
            raise OSError("token file unreadable")

    with pytest.raises(OSError, match="unreadable"):
        await _call(Broken(401, 200))
