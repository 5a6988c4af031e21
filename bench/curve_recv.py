"""What CURVE costs the host's loop per message received, with and without the User-Id.

A DEALER sends N two-frame messages (the ROUTER sees identity + a 120-byte envelope, as the
host does) over TCP on 127.0.0.1 to a ROUTER on three wires:

* ``plain``: no CURVE, ``recv_frames`` (the host's fast path today);
* ``curve``: CURVE with the ZAP handler, ``recv_frames`` (what encryption alone costs);
* ``curve+user``: CURVE, ``recv_frames_user`` (``Channel(with_user=True)``: ``copy=False``
  frames, ``Frame.get("User-Id")``).

Measured: the CPU one receive costs the host's loop. The N messages are sent first and left
to arrive (a pause: the libzmq I/O thread decrypts them meanwhile), then one timed loop
receives them all; a receive that finds nothing yet waits (``poll``) and is counted as a miss.
Decryption happens in the I/O thread before that loop, so ``curve`` against ``plain`` shows
only what reading a decrypted message costs more (little); ``curve+user`` against ``curve`` is
the price of the User-Id. Medians (and extremes) of ``--rounds`` interleaved rounds. Then
the paired figure, steadier on a busy machine: one CURVE connection, everything queued, blocks
of 500 messages received in turn by each function (both see the same noise).
Run: ``python bench/curve_recv.py [--messages 100000] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import zmq

from zriver.host.zap import Authenticator
from zriver.keys import ClientKeys, ServerKeys
from zriver.eventloop import new_loop
from zriver.wire import Wire, recv_frames, recv_frames_user

PAYLOAD = b"x" * 120


def pair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


def connected(loop, secure: bool):
    """A ROUTER (CURVE server with a ZAP handler when ``secure``) and a DEALER connected to
    it, past the handshake. Returns (router, dealer, client key, server wire, client wire,
    authenticator or None)."""
    host_pub, host_sec = pair()
    cli_pub, cli_sec = pair()
    server = Wire(1 << 24, server_keys=ServerKeys(host_pub, host_sec) if secure else None)
    client = Wire(1 << 24, client_keys=ClientKeys(cli_pub, cli_sec, host_pub) if secure else None)
    auth = Authenticator(server, lambda key: key == cli_pub) if secure else None

    async def setup():
        if auth is not None:
            auth.start()
        return server.router("tcp://127.0.0.1:0")

    router, endpoint = loop.run_until_complete(setup())
    router.setsockopt(zmq.RCVHWM, 0)
    dealer = client.dealer(endpoint)
    dealer.setsockopt(zmq.SNDHWM, 0)
    dealer.send(b"hello")  # the handshake (and ZAP, on the loop) first
    while not router.poll(0):
        loop.run_until_complete(asyncio.sleep(0.001))
    router.recv_multipart()
    return router, dealer, cli_pub, server, client, auth


def run_round(mode: str, messages: int) -> tuple[float, int]:
    """(microseconds of receive work per message, misses)."""
    loop = new_loop()
    asyncio.set_event_loop(loop)
    router, dealer, cli_pub, server, client, auth = connected(loop, mode != "plain")
    receive = recv_frames_user if mode == "curve+user" else recv_frames
    for _ in range(messages):
        dealer.send(PAYLOAD)
    time.sleep(max(1.0, messages / 50_000))  # let the I/O thread queue (and decrypt) them
    misses = got = 0
    started = time.perf_counter()
    while got < messages:
        try:
            result = receive(router)
        except zmq.Again:
            misses += 1
            router.poll(1000)
            continue
        got += 1
    work = time.perf_counter() - started
    if mode == "curve+user":
        assert result[1] == cli_pub
    if auth is not None:
        auth.stop()
        loop.run_until_complete(asyncio.sleep(0))  # let the cancelled ZAP task end
    client.close()
    server.close()
    loop.close()
    return work / messages * 1e6, misses


def paired(messages: int, block: int = 500) -> tuple[float, float]:
    """On one CURVE connection with everything queued, blocks of ``block`` messages taken in
    turn by ``recv_frames`` and ``recv_frames_user``: both see the same noise. Returns their
    microseconds per message."""
    loop = new_loop()
    asyncio.set_event_loop(loop)
    router, dealer, cli_pub, server, client, auth = connected(loop, True)
    for _ in range(messages):
        dealer.send(PAYLOAD)
    time.sleep(max(1.0, messages / 50_000))
    spent = {recv_frames: 0.0, recv_frames_user: 0.0}
    taken = {recv_frames: 0, recv_frames_user: 0}
    clock = time.perf_counter
    turn = 0
    while sum(taken.values()) < messages:
        receive = (recv_frames, recv_frames_user)[turn % 2]
        turn += 1
        count = min(block, messages - sum(taken.values()))
        t0 = clock()
        done = 0
        while done < count:
            try:
                receive(router)
            except zmq.Again:
                router.poll(1000)
                continue
            done += 1
        spent[receive] += clock() - t0
        taken[receive] += count
    server.authenticator.stop()
    loop.run_until_complete(asyncio.sleep(0))
    client.close()
    server.close()
    loop.close()
    return (spent[recv_frames] / taken[recv_frames] * 1e6,
            spent[recv_frames_user] / taken[recv_frames_user] * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, int]]] = {m: [] for m in ("plain", "curve", "curve+user")}
    for _ in range(args.rounds):  # interleaved, so drift hits every mode alike
        for mode in results:
            results[mode].append(run_round(mode, args.messages))
    print(f"{args.messages} messages x {args.rounds} rounds (medians)")
    print(f"{'mode':<12} {'recv us/msg':>12} {'min':>7} {'max':>7} {'misses':>7}")
    for mode, rows in results.items():
        costs = [r[0] for r in rows]
        print(f"{mode:<12} {statistics.median(costs):>12.3f} {min(costs):>7.3f} "
              f"{max(costs):>7.3f} {sum(r[1] for r in rows):>7}")
    pairs = [paired(args.messages) for _ in range(args.rounds)]
    extra = [user - plain for plain, user in pairs]
    print(f"paired, on one CURVE connection: recv_frames {statistics.median(p[0] for p in pairs):.3f}"
          f" us, recv_frames_user {statistics.median(p[1] for p in pairs):.3f} us; the User-Id "
          f"costs {statistics.median(extra):.3f} us per message (rounds: "
          f"{', '.join(f'{e:.2f}' for e in extra)})")


if __name__ == "__main__":
    main()
