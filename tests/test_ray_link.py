"""The Ray engine's handshake and control messages, without Ray: pure functions."""

from __future__ import annotations

from taskwarden.pool import _ray_link as L

SECRET = b"s" * L.SECRET_SIZE


def test_a_good_hello_says_who_is_calling() -> None:
    nonce = L.new_nonce()
    data = L.hello(SECRET, nonce, L.ROLE_DATA, 7, 4242)
    assert len(data) == L.HELLO.size
    assert L.check_hello(SECRET, nonce, data) == (L.ROLE_DATA, 7, 4242)


def test_a_hello_without_the_secret_is_refused() -> None:
    nonce = L.new_nonce()
    forged = L.hello(b"x" * L.SECRET_SIZE, nonce, L.ROLE_CONTROL, 1, 1)
    assert L.check_hello(SECRET, nonce, forged) is None


def test_a_hello_is_good_for_its_own_nonce_only() -> None:
    recorded = L.hello(SECRET, L.new_nonce(), L.ROLE_CONTROL, 1, 1)
    assert L.check_hello(SECRET, L.new_nonce(), recorded) is None  # a replay


def test_a_hello_altered_on_the_way_is_refused() -> None:
    nonce = L.new_nonce()
    data = bytearray(L.hello(SECRET, nonce, L.ROLE_DATA, 7, 4242))
    data[5 + 7] ^= 1  # the last byte of the worker id
    assert L.check_hello(SECRET, nonce, bytes(data)) is None
    assert L.check_hello(SECRET, nonce, bytes(data[:-1])) is None  # cut short
    bad_role = L.HELLO.pack(L.MAGIC, 9, 7, 4242, bytes(32))
    assert L.check_hello(SECRET, nonce, bad_role) is None


def test_control_messages_split_at_their_boundaries() -> None:
    buf = bytearray(L.control(L.STARTED, 99) + L.control(L.EXITED, -9))
    buf += L.control(L.KILL)[:3]
    assert L.split_control(buf) == [(L.STARTED, 99), (L.EXITED, -9)]
    assert len(buf) == 3  # the partial message waits for the rest
    buf += L.control(L.KILL)[3:]
    assert L.split_control(buf) == [(L.KILL, 0)]
