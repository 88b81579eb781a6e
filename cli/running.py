"""What a running ``postroom dev`` keeps in its var directory: its pid and its banner.

The banner (every URL, the API token, the logins) is the last thing ``postroom
dev`` prints; it is also written to ``banner.txt`` (mode 0600: it holds the
passwords), so ``postroom dev --show`` can print it again from another terminal.
Both files are removed when ``postroom dev`` stops.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

BANNER_FILE = "banner.txt"
PID_FILE = "dev.pid"
STARTUP_LOG = "startup.log"


class RunningDev:
    """The files of one ``postroom dev`` in *var_dir*."""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.banner_path = var_dir / BANNER_FILE
        self.pid_path = var_dir / PID_FILE
        self.startup_log = var_dir / STARTUP_LOG

    def started(self) -> None:
        """Record this process as the running ``postroom dev`` (its banner is not up yet)."""
        self.banner_path.unlink(missing_ok=True)
        self.pid_path.write_text(f"{os.getpid()}\n")

    def ready(self, lines: Sequence[str]) -> None:
        descriptor = os.open(self.banner_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))

    def stopped(self) -> None:
        if self.pid() == os.getpid():
            self.banner_path.unlink(missing_ok=True)
            self.pid_path.unlink(missing_ok=True)

    def pid(self) -> int | None:
        """The pid of the ``postroom dev`` running here, or None."""
        try:
            pid = int(self.pid_path.read_text().strip())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        except PermissionError:
            return pid
        return pid

    def banner(self) -> str | None:
        """The banner of the running ``postroom dev``; None when none runs here (or it is
        still starting: then ``pid()`` is set)."""
        if self.pid() is None:
            return None
        try:
            return self.banner_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
