"""The accept pacer: a few new connections started per event-loop turn,
round-robin by client address, every parked connection started eventually
(or forgotten when it goes away first). Driven turn by turn with a loop that
only queues callbacks; end to end, tests/test_attacks_e2e.py's handshake
storm keeps streaming subscribers and a probe from another address unharmed."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from orderbook.server.accept_pacing import AcceptPacer


class Turns:
    """An event loop reduced to its ready queue: call_soon from one turn runs
    in the next."""

    def __init__(self) -> None:
        self.ready: list = []

    def call_soon(self, fn, *args):
        self.ready.append((fn, args))

    def turn(self) -> None:
        ready, self.ready = self.ready, []
        for fn, args in ready:
            fn(*args)


class Conn:
    def __init__(self, address: str, started: list) -> None:
        self.address = address
        self.started = started

    def start(self) -> None:
        self.started.append(self)


# A turn's arrivals: addresses of new connections, and which parked ones go away.
arrivals = st.lists(st.sampled_from("abcd"), max_size=40)
turns = st.lists(st.tuples(arrivals, st.lists(st.integers(0, 1000), max_size=3)), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(per_turn=st.integers(1, 8), script=turns)
def test_each_turn_starts_at_most_per_turn_and_every_parked_connection_starts_or_is_forgotten(per_turn, script):
    loop = Turns()
    pacer = AcceptPacer(per_turn)
    started: list[Conn] = []
    parked: list[Conn] = []
    gone: set[int] = set()
    for new, leave in script:
        loop.turn()
        before = len(started)
        now = 0
        for address in new:
            c = Conn(address, started)
            if pacer.arrive(c, address, loop):
                now += 1
            else:
                parked.append(c)
        # Started this turn: by the pacer's own turn callback and at once.
        assert len(started) - before + now <= per_turn
        for i in leave:
            waiting = [c for c in parked if c not in started and id(c) not in gone]
            if waiting:
                c = waiting[i % len(waiting)]
                pacer.forget(c, c.address)
                gone.add(id(c))
    while loop.ready:
        before = len(started)
        loop.turn()
        assert len(started) - before <= per_turn
    assert pacer.parked == 0
    assert {id(c) for c in started} == {id(c) for c in parked if id(c) not in gone}
    assert len(started) == len({id(c) for c in started}), "a connection started twice"


def test_a_storm_from_one_address_does_not_delay_another_beyond_one_turn():
    loop = Turns()
    pacer = AcceptPacer(4)
    started: list[Conn] = []
    for _ in range(1_000):
        pacer.arrive(Conn("storm", started), "storm", loop)
    probe = Conn("probe", started)
    assert not pacer.arrive(probe, "probe", loop)
    loop.turn()
    assert probe in started
    assert Counter(c.address for c in started) == {"storm": 3, "probe": 1}


def test_addresses_take_turns():
    loop = Turns()
    pacer = AcceptPacer(1)
    started: list[Conn] = []
    pacer.arrive(Conn("x", started), "x", loop)  # takes this turn's quota
    for address in "aaabbc":
        pacer.arrive(Conn(address, started), address, loop)
    while loop.ready:
        loop.turn()
    assert "".join(c.address for c in started) == "abcaba"
