"""systemd's notification protocol (sd_notify), so `Type=notify` units know the truth.

READY=1 once capture is open (not when the process starts), WATCHDOG=1 from the
main loop (a hung pipeline stops pinging and systemd restarts it), STATUS= a
line `systemctl status` shows. Outside systemd (no NOTIFY_SOCKET) every call
does nothing. The protocol is one datagram per message on a unix socket; a
dozen lines do not justify a dependency.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.socket = None
        if address:
            if address.startswith("@"):  # abstract namespace
                address = "\0" + address[1:]
            self.address = address
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # Ping at half the watchdog period, as sd_watchdog_enabled(3) advises.
        self.watchdog_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self.socket is not None

    def send(self, *fields: str) -> None:
        if self.socket is None:
            return
        with contextlib.suppress(OSError):  # systemd gone or restarting: nothing to tell
            self.socket.sendto("\n".join(fields).encode(), self.address)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """Ping if a watchdog is configured and half its period has passed."""
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
