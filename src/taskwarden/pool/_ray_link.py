"""How a Ray worker's connections to its supervisor open, and what the control one says.

Each worker slot on Ray opens two TCP connections to the supervisor's
listening socket: a control connection from its agent (the Ray actor) and a
data connection from the worker process the agent starts (the same frames as
a local worker's channel, see ``_wire``).

Both open the same way, before a single byte is unpickled::

    supervisor -> peer   NONCE (16 random bytes)
    peer -> supervisor   HELLO: magic, role, wid, pid, HMAC-SHA256(secret, nonce+magic+role+wid+pid)

The secret is the supervisor's own (32 random bytes, handed to its actors by
Ray); it never crosses this connection, and a reply is good for one nonce
only. Anything else closes the connection.

After the hello, the control connection carries fixed-size messages
(``CONTROL``: a kind byte and a signed 32-bit value), never a pickle:
the supervisor says GO (start the worker process), INTERRUPT (the grace
signal), NUDGE (read the channel now) or KILL (the worker's process tree);
the agent says STARTED (the worker's pid), EXITED (its exit status: a code,
or minus the signal that killed it) or SPAWN_FAILED (an errno).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import socket
import struct
from typing import NamedTuple

MAGIC = b"TWR1"
SECRET_SIZE = 32
NONCE_SIZE = 16
HELLO = struct.Struct("!4sBQi32s")  # magic, role, wid, pid, mac
_SIGNED = struct.Struct("!4sBQi")  # what the mac covers (after the nonce)
CONTROL = struct.Struct("!ci")  # kind, value

ROLE_CONTROL = 1
ROLE_DATA = 2

# supervisor -> agent
GO = b"G"
INTERRUPT = b"I"
NUDGE = b"N"
KILL = b"K"
# agent -> supervisor
STARTED = b"C"
EXITED = b"X"
SPAWN_FAILED = b"F"

CONNECT_TIMEOUT = 30.0  # a peer that cannot reach its supervisor in this time gives up


class Where(NamedTuple):
    """Where a supervisor listens: TCP for every node, and a Unix socket that a peer on
    the supervisor's own machine uses instead (a third of the cost per message)."""

    host: str
    port: int
    unix_path: str  # "" if none
    boot_id: str  # this machine's (this boot's) id: a peer elsewhere has another


def boot_id() -> str:
    """This machine's id for this boot (Linux); "" where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def new_secret() -> bytes:
    return os.urandom(SECRET_SIZE)


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def _mac(secret: bytes, nonce: bytes, role: int, wid: int, pid: int) -> bytes:
    signed = _SIGNED.pack(MAGIC, role, wid, pid)
    return hmac.new(secret, nonce + signed, hashlib.sha256).digest()


def hello(secret: bytes, nonce: bytes, role: int, wid: int, pid: int) -> bytes:
    """The peer's answer to ``nonce``."""
    return HELLO.pack(MAGIC, role, wid, pid, _mac(secret, nonce, role, wid, pid))


def check_hello(secret: bytes, nonce: bytes, data: bytes) -> tuple[int, int, int] | None:
    """(role, wid, pid) of a good hello, else None. Nothing here unpickles anything."""
    if len(data) != HELLO.size:
        return None
    magic, role, wid, pid, mac = HELLO.unpack(data)
    if magic != MAGIC or role not in (ROLE_CONTROL, ROLE_DATA):
        return None
    if not hmac.compare_digest(mac, _mac(secret, nonce, role, wid, pid)):
        return None
    return role, wid, pid


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Blocking read of ``size`` bytes; ConnectionError if the peer closes first."""
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("the supervisor closed the connection")
        buf += chunk
    return bytes(buf)


def _open(where: Where) -> socket.socket:
    """A connected socket: the Unix one on the supervisor's machine, else TCP. A Unix
    path that does not connect (another container on the same machine, whose files
    are not ours) falls back to TCP."""
    if where.unix_path and where.boot_id and where.boot_id == boot_id():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(where.unix_path)
        except OSError:
            sock.close()
        else:
            return sock
    sock = socket.create_connection((where.host, where.port), timeout=CONNECT_TIMEOUT)
    with contextlib.suppress(OSError):
        tune_tcp(sock)
    return sock


def tune_tcp(sock: socket.socket) -> None:
    """No Nagle delay (a result goes out at once), and keepalive probes."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    keep_alive(sock)


def connect(where: Where, secret: bytes, role: int, wid: int) -> socket.socket:
    """Open one connection to the supervisor and say who this is (the peer side)."""
    sock = _open(where)
    try:
        nonce = recv_exactly(sock, NONCE_SIZE)
        sock.sendall(hello(secret, nonce, role, wid, os.getpid()))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def keep_alive(sock: socket.socket) -> None:
    """Have the kernel probe an idle connection, and give up on data unacknowledged for
    as long, so that one to a machine that vanished (a node powered off sends no FIN)
    errors out in about 11 s rather than hours."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3),
                        ("TCP_USER_TIMEOUT", 11_000)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def control(kind: bytes, value: int = 0) -> bytes:
    return CONTROL.pack(kind, value)


def split_control(buf: bytearray) -> list[tuple[bytes, int]]:
    """Take every complete control message off the front of ``buf``."""
    size = CONTROL.size
    count = len(buf) // size
    out = [CONTROL.unpack_from(buf, i * size) for i in range(count)]
    del buf[: count * size]
    return out
