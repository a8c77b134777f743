"""The suite's port picker stays out of the ranges other processes draw from."""

import socket

from tests.server_process import free_port


def _ephemeral() -> range:
    lo, hi = (int(x) for x in open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    return range(lo, hi + 1)


def test_free_port_is_below_the_ephemeral_range_and_above_rays_worker_ports():
    ports = {free_port() for _ in range(50)}
    assert len(ports) > 40, "ports should be drawn at random, not reused"
    assert all(20000 <= p < 32000 for p in ports), ports  # Ray's workers: 10002-19999
    assert not ports & set(_ephemeral()), "bind(0) and outgoing connections draw from there"


def test_free_port_skips_a_port_someone_holds():
    held = []
    try:
        for port in range(20000, 32000, 7):  # hold one in seven ports in the range
            s = socket.socket()
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                s.close()
                continue
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        assert not {free_port() for _ in range(50)} & taken
    finally:
        for s in held:
            s.close()
