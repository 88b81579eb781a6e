"""Benchmarks: ``make bench`` or ``.venv/bin/python -m bench [stack|engine] [options]``.

- ``stack``: the whole service as ``make run`` starts it, driven over HTTP
  (:mod:`bench.whole_stack`; ``--million`` adds the million-recipient run).
- ``engine``: the delivery engine alone against Flask-Mail (:mod:`bench.engine`).

With no subcommand both run with their defaults, the whole stack first.
``python -m bench stack --help`` and ``python -m bench engine --help`` list
each one's options.
"""

from __future__ import annotations

import sys

from bench import engine, whole_stack

COMMANDS = {"stack": whole_stack.main, "engine": engine.main}


def main(argv: list[str]) -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # shown as it goes
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
        return
    if argv:
        raise SystemExit(f"python -m bench: unknown subcommand {argv[0]!r}; "
                         f"use one of {', '.join(COMMANDS)} (or none for both)")
    whole_stack.main([])
    print()
    engine.main([])


if __name__ == "__main__":
    main(sys.argv[1:])
