"""How a subscriber treats a refused Subscribe: which refusals it gives up
on, and how soon it asks again for the others (docs/protocol.md §7.3, §7.6).

The subscribers differ only here: the client gives up on a symbol the node
does not know unless it held a book of it (a restarted node waiting for its
feed); the recorder waits for any symbol to appear, pinging between retries;
the load-test checker retries everything, reporting each refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

from orderbook.wire.codec import ErrorCode

# Subscription refusals that retrying cannot fix (docs/protocol.md §4.3).
PERMANENT_REFUSALS: frozenset[int] = frozenset(
    {
        ErrorCode.ERROR_CODE_UNKNOWN_SYMBOL,
        ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
        ErrorCode.ERROR_CODE_TOO_MANY_SUBSCRIPTIONS,
    }
)


@dataclass(frozen=True, slots=True)
class RefusalPolicy:
    """`give_up`: error codes after which a symbol is dropped (`Rejected`);
    any other refusal is retried after a jittered delay from `retry_base`
    up to `retry_cap` seconds, never sooner than `retry_floor` (full jitter
    may draw ~0, and a tight loop would hit the server's limit of 20 errors
    in a row). `wait_if_held`: UNKNOWN_SYMBOL for a symbol whose book was
    held is retried even if it is in `give_up`. `ping_before_retry`: send a
    Ping before each retried Subscribe; its answer resets the server's count
    of consecutive errors, so a symbol may be asked for indefinitely."""

    give_up: frozenset[int] = PERMANENT_REFUSALS
    wait_if_held: bool = True
    retry_base: float = 0.5
    retry_cap: float = 10.0
    retry_floor: float = 0.25
    ping_before_retry: bool = False

    def __post_init__(self) -> None:
        if self.retry_base < 0 or self.retry_cap < 0 or self.retry_floor < 0:
            raise ValueError("retry delays must be >= 0")
