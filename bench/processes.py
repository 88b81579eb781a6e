"""The processes under ``postroom dev`` and their memory, read from ``/proc``.

Every child of ``postroom dev`` runs in its own session, but each still names
its parent, so the tree is found by parent pid. A process's role comes from its
command line: ``gunicorn`` is web, ``celery ... beat`` is beat, ``celery ...
flower`` is Flower, and any other process is counted as a worker (the main
process of a Celery worker and its pool processes alike).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

PAGE_KIB = 4


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, session id) of *pid*, or ``None`` once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[3])


def session_id(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[2]


def descendants(root: int) -> list[int]:
    """Every live process below *root*."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat[0] != "Z":
            parents.setdefault(stat[1], []).append(int(entry.name))
    found: list[int] = []
    frontier = [root]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found += children
        frontier += children
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def role(command: str) -> str:
    words = command.split()
    if any(word.endswith("gunicorn") for word in words):
        return "web"
    if "celery" in command and "beat" in words:
        return "beat"
    if "flower" in words:
        return "flower"
    return "worker"


def rss_kib(pid: int) -> int | None:
    """Resident memory of *pid* in KiB, or ``None`` once it is gone."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
    return pages * PAGE_KIB


@dataclass
class ProcessMemory:
    """One process's RSS over a run: the first sample, the one marked as start, the last."""

    pid: int
    role: str
    command: str
    first_kib: int
    start_kib: int | None = None
    last_kib: int = 0
    peak_kib: int = 0


@dataclass
class MemorySampler:
    """Samples the RSS of every process under *root* every *interval* seconds, in a thread."""

    root: int
    interval: float = 1.0
    processes: dict[int, ProcessMemory] = field(default_factory=dict)
    samples: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._mark = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def mark_start(self) -> None:
        """From the next sample on, a process's first RSS counts as its start value."""
        self._mark.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        marked = self._mark.is_set()
        for pid in descendants(self.root):
            kib = rss_kib(pid)
            if kib is None:
                continue
            seen = self.processes.get(pid)
            if seen is None:
                command = command_line(pid)
                seen = self.processes[pid] = ProcessMemory(pid, role(command), command, kib)
            if marked and seen.start_kib is None:
                seen.start_kib = kib
            seen.last_kib = kib
            seen.peak_kib = max(seen.peak_kib, kib)
        self.samples += 1

    def of_role(self, wanted: str) -> list[ProcessMemory]:
        return [p for p in self.processes.values() if p.role == wanted]
