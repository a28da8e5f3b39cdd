"""A long-running controller sees many objects come and go: what it remembers of them must go with them."""

from __future__ import annotations

import asyncio

from capi_provider import api
from capi_provider.controller.context import Context
from capi_provider.controller.hosts import host_changed, host_daemon
from capi_provider.controller.machines import machine_changed, machine_daemon
from tests.unit.fakes import LOG, World


class Stopped:
    """kopf's DaemonStopped as the daemons use it: falsy until set, awaitable."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def __bool__(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def set(self) -> None:
        self._event.set()


class Memo:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx


def test_a_thousand_machines_and_hosts_created_and_deleted_leave_nothing_behind() -> None:
    w = World.new()
    w.cluster(namespace="b")
    n = 1000
    for i in range(n):
        # Machines in a namespace without hosts: each one lands in waiting_for_host.
        w.machine(f"m{i}", namespace="b", data=False)
        w.host(f"h{i}", state=None)
    memo = Memo(w.ctx)

    async def lifecycle() -> None:
        stops, tasks = [], []
        hosts, machines = w.kube.host_index(), w.kube.machine_index()
        for i in range(n):
            bmm, bmh = w.bmm(f"m{i}", "b"), w.bmh(f"h{i}")
            machine_changed(body=bmm, memo=memo)
            host_changed(body=bmh, memo=memo)
            for daemon, body, index in (
                (machine_daemon, bmm, {"host_inventory": hosts}),
                (host_daemon, bmh, {"machine_inventory": machines}),
            ):
                stopped = Stopped()
                stops.append(stopped)
                tasks.append(
                    asyncio.ensure_future(daemon(stopped=stopped, body=body, memo=memo, logger=LOG, **index))
                )
        # Every daemon has made its first pass once each object has a status written by it.
        for _ in range(200):
            await asyncio.sleep(0.05)
            done = sum(1 for o in w.kube.objects.values() if o.get("status"))
            if done >= 2 * n:
                break
        assert w.ctx.state.size() > 0 and len(w.ctx.wakers) > 0  # they did remember things meanwhile
        for i in range(n):  # the objects are deleted: kopf stops their daemons
            w.kube.delete(api.GROUP, api.MACHINES, "b", f"m{i}")
            w.kube.delete(api.GROUP, api.HOSTS, "a", f"h{i}")
        for stopped in stops:
            stopped.set()
        await asyncio.gather(*tasks)

    asyncio.run(lifecycle())
    assert w.ctx.state.size() == 0
    assert len(w.ctx.wakers) == 0
    assert len(w.ctx.credentials) == 0
