"""A slow or dead BMC delays only its own host: with one BMC answering in 10 s and one not answering at all,
being polled all the while, a hundred healthy BMCs in the same controller process still answer at once.

This is what found the lock-order deadlock in pyghmi's session module (see bmc/ipmi.py): before the fix the
healthy batches below all timed out, and stayed stuck, as soon as the slow BMC's retransmits overlapped the
healthy logins.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import threading
from collections import Counter

from lab.machine import MemoryMachine
from lab.vbmc import BmcFleet

from capi_provider.bmc.address import parse_bmc_address
from capi_provider.bmc.base import BmcCredentials, BmcError, open_driver


def _get_power(port: int, timeout: float) -> str:
    driver = open_driver(
        parse_bmc_address(f"ipmi://127.0.0.1:{port}"),
        BmcCredentials("admin", "pw"),
        verify_tls=False,
        timeout=timeout,
    )
    try:
        return driver.get_power().value
    except BmcError as e:
        return e.reason.value
    finally:
        driver.close()


def _serve_fleet(ports: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    """The BMCs, in a process of their own as real BMCs are: the controller side is what is under test."""
    with BmcFleet() as fleet:
        healthy = [fleet.add(MemoryMachine(f"ok-{i}"), password="pw").port for i in range(100)]
        slow = fleet.add(MemoryMachine("slow"), password="pw").port
        dead = fleet.add(MemoryMachine("dead"), password="pw").port
        fleet.set_fault("slow", "slow", delay=10.0)
        fleet.set_fault("dead", "no-answer")
        ports.put((healthy, slow, dead))
        stop.wait(120)


def test_healthy_bmcs_answer_while_a_slow_and_a_dead_bmc_are_polled() -> None:
    ctx = mp.get_context("spawn")
    ports_q, stop_fleet = ctx.Queue(), ctx.Event()
    server = ctx.Process(target=_serve_fleet, args=(ports_q, stop_fleet), daemon=True)
    server.start()
    healthy, slow, dead = ports_q.get(timeout=60)
    stop = threading.Event()
    started = threading.Semaphore(0)

    def keep_polling(port: int) -> None:
        while not stop.is_set():
            started.release()
            _get_power(port, timeout=5)

    pollers = [threading.Thread(target=keep_polling, args=(p,), daemon=True) for p in (slow, dead)]
    for t in pollers:
        t.start()
    for _ in pollers:
        started.acquire(timeout=30)  # the bad BMCs are being polled: their logins retransmit meanwhile
    try:
        for _ in range(3):
            # A call to the dead BMC that cannot end before its long timeout: the healthy batch must be done
            # while it is still in flight, or the healthy calls waited for it (the pyghmi deadlock).
            stuck = threading.Thread(target=_get_power, args=(dead, 300), daemon=True)
            stuck.start()
            with concurrent.futures.ThreadPoolExecutor(100) as pool:
                results = Counter(pool.map(lambda p: _get_power(p, 60), healthy))
            assert results == Counter({"off": 100}), results
            assert stuck.is_alive(), "the healthy BMCs were only served once the dead one's call had ended"
    finally:
        stop.set()
        stop_fleet.set()
        server.join(10)
