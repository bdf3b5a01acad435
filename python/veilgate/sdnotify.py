"""systemd's service notification protocol (``sd_notify(3)``), spoken directly, no libsystemd.

Under ``Type=notify`` systemd sets ``NOTIFY_SOCKET`` to a unix datagram socket (a path, or an
abstract name written ``@name``); the service sends newline-separated ``KEY=VALUE`` datagrams to
it.  veilgate sends:

* ``READY=1`` (with ``STATUS=``) once both listeners are up, and again after each reload;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a SIGHUP reload starts (what ``Type=notify-reload``
  requires; plain ``Type=notify`` shows the unit as reloading until the next ``READY=1``);
* ``STOPPING=1`` when a drain starts;
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` while the event loop runs (``WatchdogSec=``).

Without ``NOTIFY_SOCKET`` every call does nothing.  A send that fails is logged once and never
raises: a gateway keeps serving whatever systemd does.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from veilgate import log

_log = log.get("sdnotify")

__all__ = ["Notifier"]


class Notifier:
    """Sends notifications to ``address`` (``NOTIFY_SOCKET``'s value; ``None``: disabled)."""

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        if address:
            if address.startswith("@"):
                self._address = "\0" + address[1:]  # abstract namespace
            elif address.startswith("/"):
                self._address = address
            else:  # vsock: and other forms veilgate does not speak
                log.event(_log, "notify_socket_unsupported", logging.WARNING, address=address)
        self._failed = False
        self.sent: list[str] = []
        """What was sent, newest last (bounded; for tests and the debug log)."""

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(fields)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.setblocking(False)
                s.connect(self._address)
                s.send(message.encode())
        except OSError as e:
            if not self._failed:  # once: a missing socket would otherwise log every 15 s
                self._failed = True
                log.event(_log, "notify_failed", logging.WARNING, error=str(e))
            return False
        self._failed = False
        self.sent = [*self.sent[-31:], message]
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={_one_line(status)}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self, status: str = "draining") -> bool:
        return self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={_one_line(status)}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    @staticmethod
    def watchdog_interval() -> float | None:
        """Half the watchdog timeout systemd set for this process (seconds), or None."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) <= 0:
            return None
        if pid and pid != str(os.getpid()):
            return None
        return int(usec) / 2_000_000


def _one_line(text: str) -> str:
    return text.replace("\n", " ")
