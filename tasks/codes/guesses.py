"""Each mailbox's budget of one-time-code guesses, counted in Redis across requests.

A guess is spent *before* a code is compared (one atomic ``INCR``), so parallel
submissions cannot overrun the budget; a guess that compared no wrong code is
given back. The window opens with the first guess spent and lasts
:data:`GUESS_WINDOW` seconds. ``docs/SECURITY.md`` gives the arithmetic.
"""

from __future__ import annotations

from redis import Redis
from redis.exceptions import WatchError

from tasks.shared.keys import key
from tasks.shared.mailbox import mailbox_digest

GUESS_WINDOW = 24 * 3600  # seconds a mailbox's budget lasts from its first guess


class GuessBudget:
    """``postroom:otp-guesses:<mailbox digest>``: guesses spent in the current window."""

    def __init__(self, redis: Redis, per_window: int) -> None:
        self.redis = redis
        self.per_window = per_window

    @staticmethod
    def key(email: str) -> str:
        return key("otp-guesses", mailbox_digest(email))

    def spend(self, email: str) -> bool:
        """Count one guess against *email*'s mailbox; ``False`` if the budget was spent."""
        name = self.key(email)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(name, 0, ex=GUESS_WINDOW, nx=True)  # INCR keeps this TTL
            pipe.incr(name)
            _, spent = pipe.execute()
        return int(spent) <= self.per_window

    def give_back(self, email: str) -> None:
        """Undo one :meth:`spend`; a count back at zero leaves no key behind."""
        name = self.key(email)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(name)
                    spent = int(pipe.get(name) or 0)
                    pipe.multi()
                    if spent <= 1:
                        pipe.delete(name)
                    else:
                        pipe.decr(name)
                    pipe.execute()
                    return
                except WatchError:
                    continue

    def left(self, email: str) -> int:
        """Wrong codes the mailbox may still have compared in the current window."""
        return max(self.per_window - int(self.redis.get(self.key(email)) or 0), 0)
