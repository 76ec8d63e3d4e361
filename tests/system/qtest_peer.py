"""Drive the real qemu-system-x86_64 (the peer) through its qtest protocol.

The machine is created paused (``-S``): no guest code runs and QEMU's virtual clock
stands still, so every port read is a deterministic function of the port writes and
IRQ inputs we send - exactly what the pyqemu devices get in the tests. A QMP socket is
opened only to find the QOM paths of devices (for ``set_irq_in`` / ``irq_intercept_out``).
"""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

QEMU = "qemu-system-x86_64"


class QemuQtest:
    """A paused QEMU pc machine answering qtest commands on its stdin/stdout."""

    def __init__(self, tmp_path: Path, *args: str, memory: str = "128M"):
        exe = shutil.which(QEMU)
        assert exe is not None, f"{QEMU} (the peer) is not installed"
        self.qmp_path = tmp_path / f"qmp-{time.monotonic_ns()}.sock"
        cmd = [exe, "-machine", "pc", "-S", "-qtest", "stdio", "-qtest-log", "/dev/null",
               "-display", "none", "-nodefaults", "-m", memory,
               "-qmp", f"unix:{self.qmp_path},server=on,wait=off", *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.irq_levels: dict[int, bool] = {}
        self.irq_events: list[tuple[str, int]] = []
        # a reader thread keeps QEMU's stdout drained (IRQ events can be many while we
        # wait on QMP) and records the events in order, before the reply that follows
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.cmd("endianness")          # wait until the machine answers

    def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("IRQ "):
                _, what, num = line.split()
                self.irq_levels[int(num)] = what == "raise"
                self.irq_events.append((what, int(num)))
            else:
                self._replies.put(line)
        self._replies.put(None)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()       # qtest has no quit command
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> QemuQtest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol --------------------------------------------------------------------

    def cmd(self, line: str) -> str:
        """Send one command; return the text after OK (IRQ events are recorded)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        try:
            reply = self._replies.get(timeout=30)
        except queue.Empty:
            raise RuntimeError(f"qemu did not answer {line!r}") from None
        if reply is None:
            raise RuntimeError(f"qemu exited during {line!r}")
        if reply.startswith("OK"):
            return reply[3:]
        raise RuntimeError(f"qtest {line!r}: {reply}")

    def outb(self, port: int, value: int) -> None:
        self.cmd(f"outb {port:#x} {value:#x}")

    def inb(self, port: int) -> int:
        return int(self.cmd(f"inb {port:#x}"), 16)

    def set_irq_in(self, path: str, num: int, level: bool) -> None:
        self.cmd(f"set_irq_in {path} unnamed-gpio-in {num} {int(level)}")

    def irq_intercept_out(self, path: str) -> None:
        self.cmd(f"irq_intercept_out {path}")

    # -- QMP, for QOM paths ------------------------------------------------------------

    def qmp(self, *commands: tuple[str, dict[str, object]], pause: float = 0.0) -> list[object]:
        """Run QMP commands on one connection (``pause`` seconds between them); return
        their results."""
        deadline = time.monotonic() + 10
        while not self.qmp_path.exists():
            assert time.monotonic() < deadline, "QMP socket never appeared"
            time.sleep(0.01)
        results = []
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)         # a wedged peer fails the test instead of hanging
            sock.connect(str(self.qmp_path))
            f = sock.makefile("rw")

            def execute(name: str, arguments: dict[str, object]) -> object:
                f.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
                f.flush()
                while True:
                    msg = json.loads(f.readline())
                    if "return" in msg:
                        return msg["return"]
                    assert "error" not in msg, msg

            json.loads(f.readline())    # greeting
            execute("qmp_capabilities", {})
            for n, (name, arguments) in enumerate(commands):
                if n and pause:
                    time.sleep(pause)
                results.append(execute(name, arguments))
        return results

    def qom_children(self, path: str = "/machine/unattached") -> dict[str, str]:
        """{child path: type} of the QOM children of ``path``."""
        entries = self.qmp(("qom-list", {"path": path}))[0]
        assert isinstance(entries, list)
        return {f"{path}/{e['name']}": e["type"][6:-1] for e in entries
                if e["type"].startswith("child<")}

    def device_paths(self, qom_type: str) -> list[str]:
        """QOM paths of the devices of a type, in creation order."""
        found = [(p, t) for p, t in self.qom_children().items() if t == qom_type]
        return [p for p, _ in sorted(found, key=lambda e: int(e[0].rsplit("[", 1)[1][:-1]))]
