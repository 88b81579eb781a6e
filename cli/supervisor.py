"""Child processes for ``postroom dev``: started, watched, restarted and stopped.

Each child runs in its own session (so its own process group): a Ctrl-C at the
terminal reaches only the supervisor, which then stops every group itself —
SIGTERM to each leader, a wait, then SIGKILL to whatever is left in the group.
Every line a child writes is echoed with the child's name in front (or, while
the supervisor holds it, written to a file).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import click

# A child that exits this soon after starting, this many times in a row, is not restarted.
QUICK_EXIT_SECONDS = 10.0
QUICK_EXITS_ALLOWED = 3

_output_lock = threading.Lock()


def say(line: str, err: bool = False) -> None:
    """Write one line of the supervisor's own output."""
    with _output_lock:
        click.echo(line, err=err)


class GaveUp(RuntimeError):
    """A child keeps exiting right after it starts."""


class ChildOutput:
    """Where the children's lines go: the terminal, or a file while held (so the start-up
    chatter of every child does not bury what the supervisor prints once all are up)."""

    def __init__(self) -> None:
        self.held: IO[str] | None = None

    def hold(self, path: Path) -> None:
        """Write the children's lines to *path* (truncated) until :meth:`release`."""
        self.held = path.open("w", encoding="utf-8")

    def release(self) -> None:
        """Back to the terminal."""
        with _output_lock:
            if self.held is not None:
                self.held.close()
                self.held = None

    def write(self, text: str) -> None:
        """Write *text*, one or more lines, in one piece."""
        with _output_lock:
            if self.held is not None:
                self.held.write(text + "\n")
                self.held.flush()
            else:
                click.echo(text)


READ_SIZE = 64 * 1024  # bytes of a child's output read at once


def _echo_lines(name: str, stream: IO[bytes], output: ChildOutput) -> None:
    """Echo every line *stream* carries, prefixed with *name*: each read's complete lines
    in one write (a busy worker logs thousands of lines a second; one write each cost
    the supervisor a tenth of a core)."""
    prefix = f"{name:<7}| "
    fd, pending = stream.fileno(), b""
    while chunk := os.read(fd, READ_SIZE):
        *lines, pending = (pending + chunk).split(b"\n")
        if lines:
            output.write("\n".join(prefix + line.decode("utf-8", "replace").rstrip()
                                   for line in lines))
    if pending:
        output.write(prefix + pending.decode("utf-8", "replace").rstrip())
    stream.close()


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lower_priority(pid: int, niceness: int) -> None:
    """Give process *pid* (the leader of a session of its own) *niceness*, so it yields
    the CPU to the processes left at 0 when the machine is busy.

    Where the kernel groups the CPU by session (Linux's autogroup), a nice value counts
    only within the group, so the group's own weight (``/proc/<pid>/autogroup``) is set;
    the leader's nice value too, which the threads it starts inherit. Best effort: where
    neither can be set, the process runs as it would have."""
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(niceness))
    except OSError:
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except (OSError, AttributeError):
        pass


class Child:
    """One supervised command; :meth:`start` may be called again after it exits.

    *niceness* above 0 lowers its priority (:func:`lower_priority`)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str],
                 cwd: Path | None = None, niceness: int = 0) -> None:
        self.name = name
        self.niceness = niceness
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.quick_exits = 0
        self.restarts = 0
        self.output = ChildOutput()  # the supervisor's, once started by one
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        if self.niceness > 0:
            lower_priority(self.process.pid, self.niceness)
        self.started_at = time.monotonic()
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=_echo_lines, args=(self.name, self.process.stdout, self.output),
            name=f"output-{self.name}", daemon=True)
        self._reader.start()

    def exit_code(self) -> int | None:
        """The exit code once the leader has exited, else ``None``."""
        return None if self.process is None else self.process.poll()

    def terminate(self) -> None:
        """Ask the leader to stop (SIGTERM); it stops its own children."""
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """SIGKILL whatever is left of the child's process group, then reap the leader."""
        if self.process is None:
            return
        pgid = self.process.pid  # a session leader's group id is its pid
        if _group_exists(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            say(f"postroom dev: {self.name} (pid {pgid}) did not die on SIGKILL", err=True)
        if self._reader is not None:
            self._reader.join(2)


class Supervisor:
    """Starts children in order and stops them in reverse order."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.output = ChildOutput()

    def start(self, child: Child) -> Child:
        self.children.append(child)
        child.output = self.output
        child.start()
        return child

    def restart_exited(self) -> None:
        """Start again every child that has exited; give up on one that keeps exiting."""
        for child in self.children:
            code = child.exit_code()
            if code is None:
                continue
            quick = time.monotonic() - child.started_at < QUICK_EXIT_SECONDS
            child.quick_exits = child.quick_exits + 1 if quick else 0
            if child.quick_exits >= QUICK_EXITS_ALLOWED:
                raise GaveUp(f"{child.name} keeps exiting (exit code {code}); see its output above")
            child.kill_group()
            say(f"postroom dev: {child.name} exited with code {code}; restarting it")
            child.restarts += 1
            child.start()

    def stop(self, first: Sequence[Child], grace: float = 10.0) -> None:
        """Stop *first* together, then the others one by one (last started, first stopped)."""
        self._stop_together(list(first), grace)
        for child in reversed(self.children):
            if child not in first:
                self._stop_together([child], grace)

    @staticmethod
    def _stop_together(children: Sequence[Child], grace: float) -> None:
        for child in children:
            child.terminate()
        deadline = time.monotonic() + grace
        for child in children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"postroom dev: {child.name} did not stop within {grace:.0f} s; killing it",
                    err=True)
        for child in children:
            child.kill_group()
