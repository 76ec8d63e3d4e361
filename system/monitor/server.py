"""Monitors on character devices: HMP (``-monitor``) and QMP (``-qmp``) as front ends of
:mod:`pyqemu.system.chardev` (stdio, unix/tcp sockets as server or client, pty, file,
pipe, ``mon:`` multiplexers, ``chardev:ID``), around the pure engines of :mod:`.hmp` and
:mod:`.qmp`.

What the front end does, as qemu's monitor/hmp.c and monitor/qmp.c do:

- when the chardev opens (a client connects to a socket; stdio, pty and files are open
  from the start): HMP prints its banner and prompt, QMP sends its greeting and starts
  in capabilities negotiation; when a socket client leaves and another comes, it gets a
  fresh greeting (a chardev serves one client at a time, as in qemu).
- on a ``mon:`` multiplexer, HMP output is held while another front end (the serial
  port) has the focus, and shown when Ctrl-A c brings the monitor forward (banner and
  prompt on the first switch); leaving the monitor prints a line break. The greeting
  of a multiplexed monitor is given by :func:`monitors_ready` (the integrator calls it
  once every front end is attached: qemu's "machine init done"), or at the first
  switch to the monitor.
- commands run on the chardev's reader thread, one at a time per monitor; QMP events
  from ``machine.events`` go to every negotiated QMP client.
- :func:`close_all` (also registered with atexit; call it before
  ``chardev.close_all()``) lets a command that is being answered finish writing: a
  QMP ``quit`` sends SHUTDOWN, then its ``{"return": {}}``, then the process exits.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from pyqemu.system import chardev as chardev_mod

from .hmp import BANNER, PROMPT, Hmp, HmpSession


def _is_connected(chr_: Any) -> bool:
    base = chr_.mux.base if isinstance(chr_, chardev_mod.MuxFrontend) else chr_
    if isinstance(base, chardev_mod.SocketChardev):
        return base.wait_connected(timeout=0)
    return True


class MonitorFrontend:
    """One monitor (HMP or QMP) attached to one chardev."""

    def __init__(self, chr_: Any, machine: Any, *, kind: str = "hmp",
                 pretty: bool = False) -> None:
        if kind not in ("hmp", "qmp"):
            raise ValueError(kind)
        self.chardev = chr_
        self.machine = machine
        self.kind = kind
        self.pretty = pretty
        self.hmp = Hmp(machine)
        if kind == "qmp":            # (the QMP engine is imported only when used)
            from .qmp import QmpCommands

            self.qmp_commands = QmpCommands(machine, self.hmp)
        self.session: Any = None
        self._lock = threading.RLock()       # output and session state
        self._cmd_lock = threading.Lock()    # one command at a time
        self._busy = 0
        self._idle = threading.Condition()
        self._opened = False
        self._ever_opened = False
        self._closed = False
        self.is_mux = isinstance(chr_, chardev_mod.MuxFrontend)
        self._mux_out = False
        self._held = bytearray()             # HMP output while the mux focus is elsewhere
        self._reset_seen = False
        self._new_session()
        events = getattr(machine, "events", None)
        if kind == "qmp" and events is not None:
            events.subscribe(self._on_machine_event)
        chr_.set_event_handler(self._on_chardev_event)
        chr_.set_reader(self._on_bytes)
        if self.is_mux:
            # qemu opens multiplexed monitors at machine init done, with the focus on
            # the last front end (the serial port): see monitors_ready()
            self._mux_out = chr_.mux.focus != chr_.index
        elif _is_connected(chr_):
            self._open()

    # -- output ---------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if not data or self._closed:
            return
        with self._lock:
            if self.kind == "hmp" and self._mux_out:
                self._held += data
                return
            self.chardev.write(data)

    def _new_session(self) -> None:
        if self.kind == "qmp":
            from .qmp import QmpSession

            self.session = QmpSession(self.qmp_commands, pretty=self.pretty)
        else:
            self.session = HmpSession(self.hmp)

    def _open(self, *, event: bool = False) -> None:
        """qemu's CHR_EVENT_OPENED: HMP prints its banner (on every open: a socket
        client that comes back sees it again), and its prompt unless the mux focus is
        elsewhere; QMP starts a new session with its greeting. ``event`` False: the
        open found at attach time (or first input), only if not open yet."""
        with self._lock:
            if not event and (self._opened or self._ever_opened):
                # the attach-time open after the reader thread already opened, read
                # to EOF (closed) and maybe ran quit: qemu printed its banner once
                return
            self._opened = True
            self._ever_opened = True
            if self.kind == "qmp":
                self._new_session()
                self._send(self.session.greeting())
                return
            self._send(HmpSession.crlf(BANNER))
            if not self._mux_out:
                self.session.readline.start_line()
                self._send(PROMPT.encode())
            self._reset_seen = True

    # -- chardev events ---------------------------------------------------------------------

    def _on_chardev_event(self, name: str) -> None:
        if name == "opened":
            self._open(event=True)
        elif name == "closed":
            with self._lock:
                self._opened = False
                if self.kind == "qmp":
                    self._new_session()
        elif name == "mux-in":
            with self._lock:
                self._mux_out = False
                if not self._reset_seen:
                    self._open()
                else:
                    self.session.readline.start_line()
                    held, self._held = bytes(self._held), bytearray()
                    self.chardev.write(held + PROMPT.encode())
        elif name == "mux-out":
            with self._lock:
                if self._reset_seen and not self._mux_out:
                    self.chardev.write(b"\r\n")
                self._mux_out = True

    def ready(self) -> None:
        """qemu's machine-init-done moment for a multiplexed monitor: opened now."""
        if self.is_mux:
            with self._lock:
                self._mux_out = self.chardev.mux.focus != self.chardev.index
            self._open()

    # -- input ------------------------------------------------------------------------------

    def _busy_enter(self) -> None:
        with self._idle:
            self._busy += 1

    def _busy_exit(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def _on_bytes(self, data: bytes) -> None:
        if self._closed:
            return
        if not self._opened:
            self._open()
        with self._cmd_lock:
            if self.kind == "qmp":
                self._qmp_input(data)
            else:
                self._hmp_input(data)

    def _qmp_input(self, data: bytes) -> None:
        session = self.session
        for item in session.feed(data):
            if "reply" in item:
                self._send(session.format(item["reply"]))
                continue
            self._busy_enter()
            try:
                reply = session.run(item["request"])
                self._send(session.format(reply))
            finally:
                self._busy_exit()

    def _hmp_input(self, data: bytes) -> None:
        session = self.session
        for echo, line in session.feed(data):
            if self.hmp.suspended:          # quit: the rest of the input is not read
                break
            self._send(echo)
            if line is None:
                continue
            self._busy_enter()
            try:
                out = self.hmp.run(line)
                self._send(session.after_command(out))
            finally:
                self._busy_exit()

    # -- QMP events ----------------------------------------------------------------------------

    def _on_machine_event(self, name: str, data: dict[str, Any] | None) -> None:
        with self._lock:
            session = self.session
            if not self._opened or self.kind != "qmp":
                return
            line = session.event(name, data)
            if line is not None:
                self._send(line)

    # -- closing ---------------------------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for a command being answered, then stop taking input."""
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout=timeout)
        self._closed = True
        with _MONITORS_LOCK:
            if self in _MONITORS:
                _MONITORS.remove(self)
        try:
            self.chardev.set_reader(None)
        except Exception:
            pass


_MONITORS: list[MonitorFrontend] = []
_MONITORS_LOCK = threading.Lock()


def attach_monitor(chr_: Any, machine: Any, *, kind: str = "hmp",
                   pretty: bool = False) -> MonitorFrontend:
    """Make ``chr_`` (a Chardev, or a mux's ``frontend()``) a monitor of ``machine``
    (``pretty``: -qmp-pretty / -mon ...,pretty=on)."""
    mon = MonitorFrontend(chr_, machine, kind=kind, pretty=pretty)
    with _MONITORS_LOCK:
        _MONITORS.append(mon)
    return mon


def start_monitor(spec: str, machine: Any, *, kind: str = "hmp",
                  label: str | None = None, pretty: bool = False) -> MonitorFrontend:
    """``-monitor SPEC`` (kind "hmp") or ``-qmp SPEC`` (kind "qmp"): open the chardev
    (qemu's labels compat_monitor0, 1, ... in order) and attach a monitor to it.
    Raises :class:`pyqemu.system.chardev.ChardevError` with qemu's message."""
    if label is None:
        with _MONITORS_LOCK:
            label = "compat_monitor%d" % len(_MONITORS)
    chr_ = chardev_mod.open_chardev(spec, for_monitor=True, label=label)
    if isinstance(chr_, chardev_mod.MuxChardev):
        chr_ = chr_.frontend()
    return attach_monitor(chr_, machine, kind=kind, pretty=pretty)


def monitors_ready() -> None:
    """Every front end is attached: multiplexed monitors open now (banner held until
    Ctrl-A c brings the monitor forward, as in qemu -nographic)."""
    with _MONITORS_LOCK:
        mons = list(_MONITORS)
    for mon in mons:
        mon.ready()


def close_all() -> None:
    """Close every monitor (idempotent): waits for answers being written."""
    with _MONITORS_LOCK:
        mons = list(_MONITORS)
        _MONITORS.clear()
    for mon in mons:
        mon.close()


atexit.register(close_all)
