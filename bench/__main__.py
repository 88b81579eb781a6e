"""Benchmarks: ``make bench`` or ``.venv/bin/python -m bench [stack|engine] [options]``.

- ``stack``: the whole service as ``make run`` starts it, driven over HTTP
  (:mod:`bench.whole_stack`; ``--million`` adds the million-recipient run).
- ``engine``: the delivery engine alone against Flask-Mail (:mod:`bench.engine`).

With no subcommand both run with their defaults, the whole stack first.
``python -m bench stack --help`` and ``python -m bench engine --help`` list
each one's options.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"stack": "bench.whole_stack", "engine": "bench.engine"}  # imported when run


def run(command: str, argv: list[str]) -> None:
    importlib.import_module(COMMANDS[command]).main(argv)


def main(argv: list[str]) -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # shown as it goes
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv and argv[0] in COMMANDS:
        run(argv[0], argv[1:])
        return
    if argv:
        raise SystemExit(f"python -m bench: unknown subcommand {argv[0]!r}; "
                         f"use one of {', '.join(COMMANDS)} (or none for both)")
    run("stack", [])
    print()
    run("engine", [])


if __name__ == "__main__":
    main(sys.argv[1:])
