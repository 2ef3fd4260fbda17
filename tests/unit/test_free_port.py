"""free_port (tests/support/mesh.py), the ports every test and bench stack listens on: distinct
within a process and outside the kernel's ephemeral range, where bind(0) gave one stack in a
hundred the same port twice and where other programs' bind(0) and outgoing connections draw."""

from __future__ import annotations

import socket

from tests.support import mesh


def test_ports_are_distinct_free_and_below_the_ephemeral_range() -> None:
    ports = [mesh.free_port() for _ in range(2000)]  # a hundred stacks' worth
    assert len(set(ports)) == len(ports)
    start = mesh._ephemeral_start()
    assert all(mesh._LOWEST_PORT <= port < start for port in ports), (start, sorted(ports)[-3:])
    for port in ports[:50]:
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", port))  # really free


def test_a_port_in_use_is_never_handed_out() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert not mesh._bindable(taken)
        assert taken not in {mesh.free_port() for _ in range(500)}
