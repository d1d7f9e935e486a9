"""service.keys: the one API-key check, the throttle on guessing (with an injected clock) and the client
address behind trusted proxies."""

from __future__ import annotations

import pytest

from service.keys import AuthThrottle, client_address, encode_keys, key_problem

KEYS = ("first-key-0123456789", "second-key-9876543210")
ENCODED = encode_keys(KEYS)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestKeyProblem:
    @pytest.mark.parametrize("key", KEYS)
    def test_each_key_passes_as_bytes_or_text(self, key: str) -> None:
        assert key_problem(f"Bearer {key}", ENCODED) is None
        assert key_problem(f"bearer  {key} ".encode(), ENCODED) is None  # scheme case, blanks around

    def test_a_missing_key_is_not_a_guess(self) -> None:
        problem = key_problem(None, ENCODED)
        assert problem is not None and not problem.wrong_key
        assert problem.detail == "this route needs an API key: send Authorization: Bearer <key>"
        assert problem.challenge == 'Bearer realm="poolserve"'

    @pytest.mark.parametrize("header", ["Bearer ", "Bearer", f"Basic {KEYS[0]}", KEYS[0], ""])
    def test_a_malformed_header_is_not_a_guess(self, header: str) -> None:
        problem = key_problem(header, ENCODED)
        assert problem is not None and not problem.wrong_key
        assert problem.detail == "the Authorization header must be Bearer <key>"
        assert 'error="invalid_request"' in problem.challenge

    @pytest.mark.parametrize(
        "token", [KEYS[0] + "x", KEYS[0][:-1], KEYS[1].upper(), f"{KEYS[0]},{KEYS[1]}", "é" * 20]
    )
    def test_a_wrong_key_is_a_guess(self, token: str) -> None:
        problem = key_problem(f"Bearer {token}", ENCODED)
        assert problem is not None and problem.wrong_key
        assert problem.detail == "invalid API key" and 'error="invalid_token"' in problem.challenge

    def test_no_keys_accept_nothing(self) -> None:
        problem = key_problem(f"Bearer {KEYS[0]}", ())
        assert problem is not None and problem.wrong_key


class TestAuthThrottle:
    def _throttle(self) -> tuple[AuthThrottle, FakeClock, list[int]]:
        clock, refused = FakeClock(), []
        throttle = AuthThrottle(clock=clock, on_refused=lambda: refused.append(1))
        return throttle, clock, refused

    def test_19_wrong_keys_leave_the_address_open_and_the_20th_locks_it(self) -> None:
        throttle, clock, refused = self._throttle()
        for _ in range(19):
            throttle.failed("10.0.0.1")
            clock.now += 1.0
            assert throttle.retry_after("10.0.0.1") is None
        throttle.failed("10.0.0.1")  # the 20th within the minute
        assert throttle.retry_after("10.0.0.1") == 60
        assert throttle.retry_after("10.0.0.2") is None  # other addresses are not affected
        assert len(refused) == 1  # each refusal counted once, open answers never

    def test_the_lock_lasts_a_minute(self) -> None:
        throttle, clock, refused = self._throttle()
        for _ in range(20):
            throttle.failed("a")
        clock.now += 0.5
        assert throttle.retry_after("a") == 60  # rounded up: never tells a client to come back early
        clock.now += 58.6
        assert throttle.retry_after("a") == 1
        clock.now += 0.9
        assert throttle.retry_after("a") is None
        assert len(refused) == 2
        throttle.failed("a")  # the count started again: one more wrong key does not lock
        assert throttle.retry_after("a") is None

    def test_failures_older_than_the_window_do_not_count(self) -> None:
        throttle, clock, _ = self._throttle()
        for _ in range(19):
            throttle.failed("a")
        clock.now += 60.0  # the window is a minute: these 19 have left it
        throttle.failed("a")
        assert throttle.retry_after("a") is None
        for _ in range(18):
            throttle.failed("a")
        assert throttle.retry_after("a") is None
        throttle.failed("a")  # 20 within the last minute
        assert throttle.retry_after("a") == 60

    def test_remembers_a_bounded_number_of_addresses(self) -> None:
        throttle = AuthThrottle(max_clients=100, clock=FakeClock())
        for i in range(1000):
            throttle.failed(f"10.0.{i // 256}.{i % 256}")
        assert len(throttle._failures) == 100


class TestClientAddress:
    def test_the_peer_without_trusted_proxies(self) -> None:
        assert client_address("192.0.2.7", "203.0.113.9", ()) == "192.0.2.7"  # a forged header is ignored
        assert client_address("192.0.2.7", None, ("10.0.0.1",)) == "192.0.2.7"
        assert client_address(None, None, ()) == "unknown"

    def test_the_forwarded_client_behind_a_trusted_proxy(self) -> None:
        proxies = ("10.0.0.1", "10.0.0.2")
        assert client_address("10.0.0.1", "203.0.113.9", proxies) == "203.0.113.9"
        # The right-most address that is not a proxy: what the client wrote itself comes before it.
        assert client_address("10.0.0.1", "198.51.100.1, 203.0.113.9, 10.0.0.2", proxies) == "203.0.113.9"
        assert client_address("10.0.0.1", "10.0.0.2", proxies) == "10.0.0.1"  # only proxies: the peer
        assert client_address("10.0.0.1", " , ", proxies) == "10.0.0.1"

    def test_a_forwarded_address_is_cut_to_64_characters(self) -> None:
        assert client_address("10.0.0.1", "x" * 1000, ("10.0.0.1",)) == "x" * 64
