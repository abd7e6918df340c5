"""Worker processes on a Ray cluster: one agent actor per slot, one channel each.

Ray places the work; taskwarden keeps its own watchdogs. Each worker slot is
a Ray actor (``_ray_agent.Agent``, with the slot's resource requests) that
starts one worker process of its own, the same worker loop as a local
worker's, and the two connect back to this supervisor over TCP::

    supervisor loop                                 Ray node (anywhere in the cluster)
      listening socket (secret-checked) <--control-- agent actor (Ray): GO, INTERRUPT,
        |                                              NUDGE, KILL; STARTED, EXITED
        +-- Channel (the local engine's) <--data---- worker process (the agent's child):
                                                       RUN/SKIP/STOP; READY, DONE, BEAT

Results, errors with their remote traceback, heartbeats and progress travel
as the local channel's frames (``_channel.Channel``, the very same code), so
they are file descriptors in the loop's one wait: no Ray call per task, and
no thread in between. A kill (timeout, heartbeat, cancel, supersede) asks the
agent to kill its worker's process tree; the agent, which runs no task, does
it at once even while the task holds the GIL, and reports the exit status
the kernel gives it. The agent is then free for the slot's next worker. A
worker on this machine (proved by SO_PEERCRED on its Unix socket) is also
signalled and killed from here, through a pidfd, without waiting for its
agent to be scheduled.

A worker is reported gone (``WorkerExited``) only when the kernel says so:
its agent reported the exit status from ``waitpid`` and its data connection
closed, or the agent's own connection closed (the agent, or its node, died:
the worker dies with its agent) and so did the worker's. Ray's death notice
of an actor counts only for a worker that never connected (nothing of ours
ran). If an agent does not carry out a kill in ``KILL_BACKSTOP`` seconds,
``ray.kill`` ends the actor, and with it its worker.

Only connections that prove they know this supervisor's secret (an HMAC of
a fresh nonce, checked before a byte is unpickled) are kept. The TCP socket
listens on the address Ray knows this node by (127.0.0.1 for a Ray that
keeps to loopback); peers on this machine use a Unix socket instead, in a
folder only this user can enter (the same frames, a third of the cost).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import select
import selectors
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .._proctree import kill_tree
from . import _ray_link as L
from ._channel import Channel
from ._ray_agent import Agent
from ._worker import INTERRUPT_SIGNAL, NUDGE_SIGNAL
from .base import Event, Reactor, WorkerExited

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

log = logging.getLogger("taskwarden")

INSTALL_HINT = "engine='ray' needs Ray: pip install 'taskwarden[ray]'"
KILL_BACKSTOP = 2.0  # seconds an agent has to carry out a kill before ray.kill ends it
SETTLE_LIMIT = 10.0  # settle()/close() wait no longer than this for killed workers
MAX_PENDING = 64  # connections not through their hello yet: the oldest is dropped beyond
DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 1}
UNIX_SOCKETS = True  # workers on this machine connect over a Unix socket (False: TCP only)


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return ray


_started_here = False  # connect_ray() started Ray: the next RayPool shuts it down


def connect_ray(ray_address: str | None) -> Any:
    """Ray, connected: to the cluster it is already connected to, else to ``ray_address``
    (``None`` starts a local Ray, as ``ray.init()`` does)."""
    global _started_here
    ray = import_ray()
    if not ray.is_initialized():
        if ray_address is None:  # a local Ray of our own: no dashboard
            ray.init(include_dashboard=False)
        else:
            ray.init(address=ray_address)
        _started_here = True
    return ray


_SIGNALS = {L.INTERRUPT: INTERRUPT_SIGNAL, L.NUDGE: NUDGE_SIGNAL}
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _same_machine_pidfd(sock: socket.socket, pid: int) -> int:
    """A pidfd for the worker at the other end of ``sock`` if it runs on this machine,
    in this pid namespace (the kernel's SO_PEERCRED names the same pid as its hello),
    else -1. Signals sent through it can never reach another process that reused the
    pid."""
    if sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return -1
    try:
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        peer_pid = _PEERCRED.unpack(cred)[0]
        if peer_pid != pid:
            return -1
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return -1


def _exited(pidfd: int) -> bool:
    """Has the process of ``pidfd`` exited (its pid may be reused by now)?"""
    return bool(select.select([pidfd], [], [], 0)[0])


class _Pending:
    """An accepted connection that has not said who it is yet."""

    __slots__ = ("buf", "nonce", "sock")

    def __init__(self, sock: socket.socket, nonce: bytes) -> None:
        self.sock = sock
        self.nonce = nonce
        self.buf = bytearray()


class _Slot:
    """One worker on Ray: its agent, its two connections, what is known of its end."""

    __slots__ = ("agent", "agent_pid", "agent_released", "channel", "ctl", "ctl_buf",
                 "ctl_closed", "data", "data_closed", "data_pid", "exit_status", "exited",
                 "killed", "pid", "pidfd", "reason", "reported", "wid")

    def __init__(self, wid: int, channel: Channel) -> None:
        self.wid = wid
        self.agent: Any = None  # the Ray actor handle, once one is free for it
        self.agent_released = False  # handed back (or dropped): no longer this slot's
        self.channel = channel
        self.ctl: socket.socket | None = None
        self.ctl_buf = bytearray()
        self.ctl_closed = False
        self.data: socket.socket | None = None
        self.data_closed = False
        self.agent_pid = 0
        self.pid = 0  # the worker process's, once the agent reports it STARTED
        self.data_pid = 0  # what the data connection's hello said
        self.pidfd = -1  # the worker's, if it runs on this machine (see _same_machine_pidfd)
        self.exited = False  # the agent reported the exit status
        self.exit_status: int | None = None
        self.killed = False
        self.reason: str | None = None
        self.reported = False


class RayPool:
    """The Ray engine behind ``Supervisor(engine="ray")``. Only the loop thread calls
    it, but the callbacks Ray runs on its own threads (they only queue and wake)."""

    def __init__(
        self,
        id_base: int,
        init_payload: bytes | None,
        max_memory: int | None = None,
        *,
        ray_address: str | None = None,
        ray_options: dict[str, Any] | None = None,
    ) -> None:
        ray = import_ray()
        self._ray = ray
        global _started_here
        connect_ray(ray_address)
        self._owns_ray, _started_here = _started_here, False  # shut down at close()
        try:
            # Ray checks the actor options here: a bad one fails the construction.
            options = {**DEFAULT_ACTOR_OPTIONS, **(ray_options or {})}
            options["max_restarts"] = 0  # a dead agent is a crash, and is replaced by us
            self._agent_cls = ray.remote(Agent).options(**options)
            host = ray.util.get_node_ip_address()
            self._secret = L.new_secret()
            self._listener = socket.create_server((host, 0), backlog=128)
            self._listener.setblocking(False)
            # Workers on this machine connect over a Unix socket, in a folder of our own
            # (mode 0700: other users cannot even reach it).
            self._unix_dir = tempfile.mkdtemp(prefix="taskwarden-")
            unix_path = os.path.join(self._unix_dir, "s")
            self._unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._unix.bind(unix_path)
            self._unix.listen(128)
            self._unix.setblocking(False)
            self._where = L.Where(host, self._listener.getsockname()[1],
                                  unix_path if UNIX_SOCKETS else "", L.boot_id())
        except BaseException:
            if self._owns_ray:
                ray.shutdown()
            raise
        self._boot = pickle.dumps((id_base, init_payload, max_memory), protocol=5)
        self._reactor: Reactor | None = None
        self._slots: dict[int, _Slot] = {}
        self._pending: dict[int, _Pending] = {}
        self._free_agents: deque[Any] = deque()  # agents whose last worker has exited
        self._waiting: deque[_Slot] = deque()  # slots waiting for an agent being freed
        self._agents: list[Any] = []  # every agent started, for close()
        self._events: list[Event] = []
        self._scratch = memoryview(bytearray(1 << 20))
        self._killed: list[_Slot] = []  # killed, not reported gone yet
        # What Ray's threads hand over (an agent's serve() call that ended), under a lock.
        self._lock = threading.Lock()
        self._ray_done: deque[tuple[int, Any, BaseException | None]] = deque()
        self._timers: dict[int, threading.Timer] = {}

    # ------------------------------------------------------------------ binding
    def bind(self, reactor: Reactor) -> None:
        self._reactor = reactor
        for listener in (self._listener, self._unix):
            reactor.watch(listener.fileno(), functools.partial(self._on_accept, listener))

    @property
    def address(self) -> tuple[str, int]:
        """Where this pool listens for its workers (TCP)."""
        return self._where.host, self._where.port

    def _r(self) -> Reactor:
        assert self._reactor is not None, "bind() comes before the first spawn"
        return self._reactor

    # ---------------------------------------------------------------- spawning
    def spawn(self, wid: int) -> None:
        reactor = self._r()
        channel = Channel(
            wid, reactor, self._events, self._scratch,
            nudge=functools.partial(self._control, wid, L.NUDGE),
            on_garbled=functools.partial(self._garbled, wid),
        )
        slot = _Slot(wid, channel)
        self._slots[wid] = slot
        if self._free_agents:
            self._assign(slot, self._free_agents.popleft())
        elif self._finishing() > len(self._waiting):
            # An agent is killing its worker (a replacement is started at the kill):
            # it is free in a few milliseconds, where a new actor takes hundreds and,
            # on a full cluster, would wait for that agent's resources anyway.
            self._waiting.append(slot)
        else:
            self._assign(slot, self._new_agent())

    def _garbled(self, wid: int) -> None:
        self.kill(wid)

    def _new_agent(self) -> Any:
        agent = self._agent_cls.remote()
        self._agents.append(agent)
        return agent

    def _finishing(self) -> int:
        """Agents whose worker is being killed or has exited, not handed back yet."""
        return sum(1 for s in self._slots.values()
                   if s.agent is not None and not s.agent_released and (s.killed or s.exited))

    def _assign(self, slot: _Slot, agent: Any) -> None:
        slot.agent = agent
        ref = agent.serve.remote(self._where, self._secret, slot.wid, self._boot)
        ref.future().add_done_callback(functools.partial(self._on_serve_done, slot.wid, agent))

    def _release_agent(self, slot: _Slot, *, alive: bool) -> None:
        """The slot is done with its agent: hand it to a waiting slot, or keep it free
        (``alive``); or, if it is dead, start a new one for a slot that waits for it."""
        if slot.agent is None or slot.agent_released:
            return
        slot.agent_released = True
        if not alive:
            self._drop_agent(slot.agent)
            if len(self._waiting) > self._finishing():
                self._assign(self._waiting.popleft(), self._new_agent())
        elif self._waiting:
            self._assign(self._waiting.popleft(), slot.agent)
        else:
            self._free_agents.append(slot.agent)

    def _on_serve_done(self, wid: int, agent: Any, future: Any) -> None:
        """On a Ray thread: an agent's serve() call for worker ``wid`` ended."""
        try:
            exc = future.exception()
        except BaseException as cancelled:  # the call was cancelled: it ended all the same
            exc = cancelled
        with self._lock:
            self._ray_done.append((wid, agent, exc))
        if self._reactor is not None:
            self._reactor.wake()

    def _take_ray_done(self) -> None:
        with self._lock:
            done, self._ray_done = self._ray_done, deque()
        for wid, agent, exc in done:
            if exc is None:
                continue  # a worker the agent ran to its end: its connections said so
            slot = self._slots.get(wid)
            if slot is None or slot.agent is not agent or slot.ctl is not None:
                self._drop_agent(agent)
                continue  # connected: the kernel tells us of its end (connections close)
            self._release_agent(slot, alive=False)
            # The agent died (or never started: no node could place it) before it
            # connected, so before any worker process of ours existed.
            if slot.reason is None:
                slot.reason = f"the Ray actor of worker {wid} died before it started it ({exc})"
            slot.ctl_closed = True
            self._maybe_report(slot)

    def _drop_agent(self, agent: Any) -> None:
        with contextlib.suppress(ValueError):
            self._free_agents.remove(agent)
        with contextlib.suppress(Exception):
            self._ray.kill(agent, no_restart=True)

    # ---------------------------------------------------------- connections
    def _on_accept(self, listener: socket.socket, mask: int) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    L.tune_tcp(sock)
            nonce = L.new_nonce()
            try:
                sock.send(nonce)  # a fresh socket's buffer takes 16 bytes whole
            except OSError:
                sock.close()
                continue
            if len(self._pending) >= MAX_PENDING:
                oldest = next(iter(self._pending))
                self._drop_pending(oldest)
            fd = sock.fileno()
            self._pending[fd] = _Pending(sock, nonce)
            self._r().watch(fd, functools.partial(self._on_hello, fd))

    def _drop_pending(self, fd: int) -> None:
        pending = self._pending.pop(fd, None)
        if pending is not None:
            self._r().unwatch(fd)
            pending.sock.close()

    def _on_hello(self, fd: int, mask: int) -> None:
        pending = self._pending.get(fd)
        if pending is None:
            return
        try:
            chunk = pending.sock.recv(L.HELLO.size - len(pending.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop_pending(fd)
            return
        pending.buf += chunk
        if len(pending.buf) < L.HELLO.size:
            return
        self._pending.pop(fd)
        self._r().unwatch(fd)
        sock = pending.sock
        who = L.check_hello(self._secret, pending.nonce, bytes(pending.buf))
        if who is None:
            log.warning("a connection to the Ray engine's port failed its hello: closed")
            sock.close()
            return
        role, wid, pid = who
        slot = self._slots.get(wid)
        if slot is None or slot.reported:
            sock.close()  # a worker given up on: its agent stops, its process exits
        elif role == L.ROLE_CONTROL:
            self._attach_control(slot, sock, pid)
        else:
            self._attach_data(slot, sock, pid)

    def _attach_control(self, slot: _Slot, sock: socket.socket, pid: int) -> None:
        if slot.ctl is not None or slot.ctl_closed:
            sock.close()
            return
        slot.ctl = sock
        slot.agent_pid = pid
        self._r().watch(sock.fileno(), functools.partial(self._on_control, slot))
        self._send_control(slot, L.KILL if slot.killed else L.GO)

    def _attach_data(self, slot: _Slot, sock: socket.socket, pid: int) -> None:
        if slot.data is not None or slot.ctl is None or slot.killed or slot.exited or (
            slot.pid and slot.pid != pid
        ):
            sock.close()
            return
        slot.data = sock
        slot.data_pid = pid
        slot.pidfd = _same_machine_pidfd(sock, pid)
        slot.channel.name = f"worker process {pid} (Ray)"
        slot.channel.attach(sock.fileno())
        # The channel watches its socket; this pool must also hear of its end.
        reactor = self._r()
        reactor.unwatch(sock.fileno())
        reactor.watch(sock.fileno(), functools.partial(self._on_data, slot),
                      write=slot.channel.writing)

    def _on_data(self, slot: _Slot, mask: int) -> None:
        slot.channel.on_ready(mask)
        if slot.channel.dead and not slot.data_closed:
            slot.data_closed = True
            self._maybe_report(slot)

    # --------------------------------------------------------------- control
    def _send_control(self, slot: _Slot, kind: bytes) -> None:
        if slot.ctl is None or slot.ctl_closed:
            return
        # Five bytes on a connection that carries a few per worker: the buffer has room.
        with contextlib.suppress(OSError):
            slot.ctl.send(L.control(kind))

    def _control(self, wid: int, kind: bytes) -> None:
        slot = self._slots.get(wid)
        if slot is None or slot.killed:
            return
        # A worker on this machine is signalled at once (no hop through its agent).
        sig = _SIGNALS.get(kind)
        if sig is not None and slot.pidfd >= 0:
            with contextlib.suppress(OSError):  # it has exited: its agent reports it
                signal.pidfd_send_signal(slot.pidfd, sig)
            return
        self._send_control(slot, kind)

    def _on_control(self, slot: _Slot, mask: int) -> None:
        assert slot.ctl is not None
        try:
            chunk = slot.ctl.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._r().unwatch(slot.ctl.fileno())
            slot.ctl_closed = True
            if not slot.exited and slot.reason is None:
                who = f"worker process {slot.pid}" if slot.pid else f"worker {slot.wid}"
                slot.reason = (
                    f"the Ray actor (agent process {slot.agent_pid}) running {who} died, "
                    f"or its node did"
                )
            self._maybe_report(slot)
            return
        slot.ctl_buf += chunk
        for kind, value in L.split_control(slot.ctl_buf):
            if kind == L.STARTED:
                slot.pid = value
                if slot.data_pid and slot.data_pid != value:
                    slot.reason = "its data connection came from another process"
                    self.kill(slot.wid)
            elif kind == L.EXITED:
                slot.exited = True
                slot.exit_status = value
                self._release_agent(slot, alive=True)  # its next serve() may start now
            elif kind == L.SPAWN_FAILED:
                slot.exited = True
                slot.reason = (
                    f"the Ray actor could not start worker {slot.wid}'s process: "
                    f"{os.strerror(value) if value else 'unknown error'}"
                )
                self._release_agent(slot, alive=True)
        self._maybe_report(slot)

    # ------------------------------------------------------------ exits
    def _data_gone(self, slot: _Slot) -> bool:
        if slot.data is None:
            return True
        if not slot.killed and not slot.data_closed:
            slot.channel.read()  # whatever it wrote before it went is acted on first
            slot.data_closed = slot.channel.dead
        return slot.data_closed

    def _maybe_report(self, slot: _Slot) -> None:
        """Report the worker gone once the kernel has said so (see the module docstring)."""
        if slot.reported:
            return
        if not (slot.exited or slot.ctl_closed) or not self._data_gone(slot):
            return
        slot.reported = True
        reactor = self._r()
        for sock in (slot.ctl, slot.data):
            if sock is not None:
                reactor.unwatch(sock.fileno())
                sock.close()
        if slot.pidfd >= 0:
            os.close(slot.pidfd)
            slot.pidfd = -1
        slot.channel.detach()
        timer = self._timers.pop(slot.wid, None)
        if timer is not None:
            timer.cancel()
        # An agent that did not report the exit died (or its node did), or never connected.
        self._release_agent(slot, alive=False)
        self._slots.pop(slot.wid, None)
        if slot.killed:
            with contextlib.suppress(ValueError):
                self._killed.remove(slot)
        reason = slot.channel.crash or slot.reason
        self._events.append(WorkerExited(slot.wid, slot.exit_status, reason))

    def _on_data_after_kill(self, slot: _Slot, mask: int) -> None:
        """A killed worker's data connection: nothing it says counts; wait for its end."""
        assert slot.data is not None
        try:
            while slot.data.recv(1 << 16):
                pass
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._r().unwatch(slot.data.fileno())
        slot.data_closed = True
        self._maybe_report(slot)

    # ------------------------------------------------------------------ sending
    def send(self, wid: int, runs: list[tuple[int, bytes, dict[str, Any] | None]]) -> None:
        slot = self._slots.get(wid)
        if slot is not None and not slot.killed:
            slot.channel.send(runs)

    def skip(self, wid: int, seq: int) -> None:
        slot = self._slots.get(wid)
        if slot is not None:
            slot.channel.skip(seq)

    def interrupt(self, wid: int, seq: int) -> None:
        self._control(wid, L.INTERRUPT)

    def stop(self, wid: int) -> None:
        slot = self._slots.get(wid)
        if slot is not None and not slot.killed:
            slot.channel.stop()

    def kill(self, wid: int) -> bool:
        """Have the agent kill its worker's process tree; True if an exit will be reported."""
        slot = self._slots.get(wid)
        if slot is None or slot.reported:
            return False
        if slot.killed:
            return True
        slot.killed = True
        slot.channel.cut()
        self._killed.append(slot)
        if slot.data is not None and not slot.data_closed:
            self._r().watch(slot.data.fileno(), functools.partial(self._on_data_after_kill, slot))
        if slot.ctl is None:
            # Not connected yet: no worker process exists (it starts on GO only). The
            # agent goes, and a hello of its later is turned away.
            with contextlib.suppress(ValueError):
                self._waiting.remove(slot)
            slot.reason = slot.reason or "killed before its Ray actor had connected"
            slot.ctl_closed = True
            self._maybe_report(slot)
            return True
        if slot.pidfd >= 0 and not _exited(slot.pidfd):
            # On this machine: killed from here at once, as the local engine does (its
            # agent need not be scheduled first); the agent still reaps and reports it.
            kill_tree(slot.data_pid)
        self._send_control(slot, L.KILL)
        timer = threading.Timer(KILL_BACKSTOP, self._backstop, (slot,))
        timer.daemon = True
        self._timers[wid] = timer
        timer.start()
        return True

    def _backstop(self, slot: _Slot) -> None:
        """On a timer thread: an agent that has not carried out a kill is ended by Ray
        (its worker dies with it); the connections closing report it."""
        if not slot.reported and not slot.exited:
            log.warning("Ray agent of worker %d did not kill it in %.0f s: ray.kill",
                        slot.wid, KILL_BACKSTOP)
            with contextlib.suppress(Exception):
                self._ray.kill(slot.agent, no_restart=True)

    def settle(self) -> list[int]:
        """Wait until every worker killed so far is gone; their ids."""
        deadline = time.monotonic() + SETTLE_LIMIT
        waiting = [s for s in self._killed if not s.reported]
        with selectors.DefaultSelector() as sel:
            for s in waiting:
                if s.ctl is not None and not s.ctl_closed:
                    sel.register(s.ctl, selectors.EVENT_READ,
                                 functools.partial(self._on_control, s))
                if s.data is not None and not s.data_closed:
                    sel.register(s.data, selectors.EVENT_READ,
                                 functools.partial(self._on_data_after_kill, s))
            while any(not s.reported for s in waiting):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for key, mask in sel.select(remaining):
                    if _closed(key.fileobj):
                        sel.unregister(key.fileobj)
                        continue
                    key.data(mask)
                for key in list(sel.get_map().values()):
                    if _closed(key.fileobj):
                        sel.unregister(key.fileobj)
        gone = [s.wid for s in waiting if s.reported]
        self._killed = [s for s in self._killed if not s.reported]
        return gone

    # ---------------------------------------------------------------- events
    def has_events(self) -> bool:
        if self._ray_done:
            self._take_ray_done()
        return bool(self._events)

    def take_events(self) -> list[Event]:
        if self._ray_done:
            self._take_ray_done()
        events = self._events[:]
        self._events.clear()  # the same list: every channel appends to it
        return events

    def alive(self) -> int:
        return len(self._slots)

    def pids(self) -> dict[int, int]:
        return {wid: s.pid for wid, s in self._slots.items() if s.pid}

    def close(self) -> None:
        for wid in list(self._slots):
            self.kill(wid)
        self.settle()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        reactor = self._reactor
        for slot in list(self._slots.values()):  # agents that never answered: Ray ends them
            for sock in (slot.ctl, slot.data):
                if sock is not None:
                    if reactor is not None:
                        reactor.unwatch(sock.fileno())
                    sock.close()
        self._slots.clear()
        for fd in list(self._pending):
            self._drop_pending(fd)
        for agent in self._agents:
            with contextlib.suppress(Exception):
                self._ray.kill(agent, no_restart=True)
        self._agents.clear()
        self._free_agents.clear()
        for listener in (self._listener, self._unix):
            if reactor is not None:
                reactor.unwatch(listener.fileno())
            listener.close()
        shutil.rmtree(self._unix_dir, ignore_errors=True)
        self._events.clear()
        if self._owns_ray:
            self._ray.shutdown()


__all__ = ["INSTALL_HINT", "RayPool", "connect_ray", "import_ray"]


def _closed(fileobj: FileDescriptorLike) -> bool:
    """A socket registered with a selector that has been closed since (fileno() is -1)."""
    return (fileobj if isinstance(fileobj, int) else fileobj.fileno()) < 0
