"""The boot server: network boot, deploy ramdisk, images and agent reports, on one asyncio HTTP server.

How a controller drives it (all coroutines on the controller's event loop; nothing here blocks it):

    server = BootServer(config); await server.start()
    ticket = await server.expect(mac, Provision(image, hints, seed))   # arm the next network boot
    ... BMC: boot device pxe, power on / cycle ...
    await server.wait_for(ticket, AgentUp, timeout)                   # the ramdisk called in
    done = await server.wait_for(ticket, Provisioned, timeout)        # or raises AgentFailed / AgentTimeout
    ... BMC: boot device disk, power cycle ...
    ticket = await server.submit(mac, Clean("metadata"))              # more work for an agent that is up

HTTP endpoints (plain HTTP: the provisioning network is the trust boundary; secrets are one-time):
    GET  /boot.ipxe                          generic chain script (point DHCP `filename` here)
    GET  /ipxe/<mac>                         per-host script, served once per armed boot
    GET  /v1/boot/<nonce>/token.cpio         initramfs fragment with the boot's token, served once
    GET  /ramdisk/vmlinuz, /ramdisk/initramfs.gz
    POST /v1/agent/hello, GET /v1/agent/next, POST /v1/agent/report        (token)
    GET  /v1/agent/image/<job>, GET /v1/agent/seed/<job>/<file>            (token, that boot's job only)
Nothing logs a token, a nonce or seed contents; the access log is off for that reason.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from capi_provider.bootserver import cpio, inventory, ipxe, tokens
from capi_provider.bootserver.hints import RootDeviceError, choose_root_device, describe
from capi_provider.bootserver.images import CachedImage, ImageCache, ImageError
from capi_provider.bootserver.model import (
    AgentUp,
    Clean,
    Cleaned,
    Disk,
    Event,
    Failed,
    Hardware,
    Inspect,
    Inspected,
    Job,
    Provision,
    Provisioned,
    ScriptFetched,
    StepReport,
)

LOG = logging.getLogger(__name__)
E = TypeVar("E", bound=Event)

CONFIG_DRIVE_BYTES = 32 << 20  # the agent's cidata partition at the end of the root disk
_MAX_EVENTS = 500


@dataclass(frozen=True)
class BootServerConfig:
    public_url: str  # how machines reach this server, e.g. http://10.0.2.100 in the lab
    kernel: Path
    initramfs: Path
    image_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    token_ttl: float = 3600.0  # an armed boot (and its agent's token) lives this long without new work
    poll_seconds: float = 20.0  # how long the agent's GET /v1/agent/next is held open
    kernel_args: str = "console=tty0 console=ttyS0,115200"
    image_timeout: float = 1800.0
    allow_file_urls: bool = False  # file:// image URLs (the lab); never for URLs users can set


@dataclass(frozen=True)
class Ticket:
    """One job given to one boot of one machine. `token` is set for `expect` (the boot's token)."""

    mac: str
    boot_id: str
    job_id: str
    token: str | None = field(default=None, repr=False)


class AgentFailed(Exception):
    def __init__(self, event: Failed) -> None:
        super().__init__(f"{event.reason}: {event.message}")
        self.event = event
        self.reason = event.reason
        self.message = event.message


class AgentTimeout(Exception):
    reason = "AgentTimeout"

    def __init__(self, message: str) -> None:
        super().__init__(f"AgentTimeout: {message}")
        self.message = message


class NoAgent(Exception):
    """`submit` needs an agent that is up; arm a network boot with `expect` instead."""


@dataclass
class _Job:
    id: str
    job: Job
    status: str = "queued"  # queued (image being prepared) | ready | running | done | failed
    image: CachedImage | None = None
    disk: Disk | None = None


@dataclass
class _Boot:
    id: str
    mac: str
    token: str | None  # plaintext only until the token fragment is served
    token_digest: str
    nonce: str | None
    nonce_digest: str
    expires_at: float
    script_served: bool = False
    token_served: bool = False
    hardware: Hardware | None = None
    last_seen: float = 0.0
    jobs: collections.deque[_Job] = field(default_factory=collections.deque)
    current: _Job | None = None
    all_jobs: dict[str, _Job] = field(default_factory=dict)
    revoked: bool = False


@dataclass
class _Host:
    mac: str
    cond: asyncio.Condition
    boot: _Boot | None = None
    events: list[Event] = field(default_factory=list)


class BootServer:
    def __init__(self, config: BootServerConfig, *, images: ImageCache | None = None) -> None:
        self.config = config
        self.public_url = config.public_url.rstrip("/")
        self.images = images or ImageCache(
            config.image_dir, timeout=config.image_timeout, allow_file_urls=config.allow_file_urls
        )
        self._hosts: dict[str, _Host] = {}
        self._nonces: dict[str, tokens.Grant] = {}
        self._tokens: dict[str, tokens.Grant] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self.clock = time.monotonic

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=inventory.MAX_REPORT_BYTES)
        app.add_routes(
            [
                web.get("/boot.ipxe", self._chain),
                web.get("/ipxe/{mac}", self._host_script),
                web.get("/v1/boot/{nonce}/token.cpio", self._token_fragment),
                web.get("/ramdisk/{name}", self._ramdisk),
                web.post("/v1/agent/hello", self._hello),
                web.get("/v1/agent/next", self._next),
                web.post("/v1/agent/report", self._report),
                web.get("/v1/agent/image/{job}", self._image),
                web.get("/v1/agent/seed/{job}/{name}", self._seed),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        LOG.info(
            "boot server listening on %s:%d, machines use %s", self.config.host, self.port, self.public_url
        )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- what a controller calls -----------------------------------------------------------------------

    async def expect(self, mac: str, job: Job) -> Ticket:
        """Arm the next network boot of `mac` with `job` (revoking any earlier boot and its token)."""
        mac = ipxe.normalize_mac(mac)
        host = self._host(mac)
        token, nonce = tokens.new_secret(), tokens.new_secret()
        boot = _Boot(
            id=uuid.uuid4().hex[:12],
            mac=mac,
            token=token,
            token_digest=tokens.digest(token),
            nonce=nonce,
            nonce_digest=tokens.digest(nonce),
            expires_at=self.clock() + self.config.token_ttl,
        )
        async with host.cond:
            self._revoke(host)
            host.boot = boot
            self._nonces[boot.nonce_digest] = tokens.Grant(mac, boot.id, boot.expires_at, one_time=True)
            self._tokens[boot.token_digest] = tokens.Grant(mac, boot.id, boot.expires_at)
            queued = self._queue(host, boot, job)
        LOG.info("%s: network boot armed (boot %s, job %s %s)", mac, boot.id, queued.id, _kind(job))
        return Ticket(mac, boot.id, queued.id, token)

    async def submit(self, mac: str, job: Job) -> Ticket:
        """Queue `job` for the agent that is up on `mac` (no reboot), extending its token's life."""
        mac = ipxe.normalize_mac(mac)
        host = self._host(mac)
        async with host.cond:
            boot = host.boot
            if boot is None or boot.revoked or not boot.token_served or boot.expires_at <= self.clock():
                raise NoAgent(f"{mac} has no agent up; arm a network boot with expect()")
            boot.expires_at = self.clock() + self.config.token_ttl
            self._tokens[boot.token_digest].expires_at = boot.expires_at
            queued = self._queue(host, boot, job)
            host.cond.notify_all()
        LOG.info("%s: job %s %s queued for the running agent", mac, queued.id, _kind(job))
        return Ticket(mac, boot.id, queued.id)

    async def cancel(self, mac: str) -> None:
        """Revoke `mac`'s armed boot and its agent's token (e.g. the host was powered off)."""
        host = self._host(ipxe.normalize_mac(mac))
        async with host.cond:
            self._revoke(host)
            host.cond.notify_all()

    def agent_up(self, mac: str, within: float | None = None) -> bool:
        """The agent of `mac`'s current boot polled within `within` seconds (default: 3 poll periods)."""
        host = self._hosts.get(ipxe.normalize_mac(mac))
        boot = host.boot if host else None
        window = within if within is not None else 3 * self.config.poll_seconds + 10
        return bool(
            boot
            and not boot.revoked
            and boot.last_seen
            and self.clock() - boot.last_seen < window
            and boot.expires_at > self.clock()
        )

    def hardware(self, mac: str) -> Hardware | None:
        host = self._hosts.get(ipxe.normalize_mac(mac))
        return host.boot.hardware if host and host.boot else None

    def events(self, mac: str) -> list[Event]:
        host = self._hosts.get(ipxe.normalize_mac(mac))
        return list(host.events) if host else []

    async def wait_for(self, ticket: Ticket, kind: type[E], timeout: float) -> E:
        """The first `kind` event of the ticket's job (or of its boot, for ScriptFetched and AgentUp).

        Raises AgentFailed when the job failed first, AgentTimeout when nothing came within `timeout`.
        """
        host = self._host(ticket.mac)
        boot_level = kind in (ScriptFetched, AgentUp)

        def found() -> Event | None:
            for ev in host.events:
                if ev.boot_id != ticket.boot_id:
                    continue
                if isinstance(ev, kind) and (boot_level or ev.job_id == ticket.job_id):
                    return ev
                if isinstance(ev, Failed) and ev.job_id == ticket.job_id:
                    return ev
            return None

        try:
            async with host.cond:
                ev = await asyncio.wait_for(host.cond.wait_for(found), timeout)
        except TimeoutError:
            last = host.boot.last_seen if host.boot and host.boot.id == ticket.boot_id else 0.0
            seen = f"last heard from {self.clock() - last:.0f}s ago" if last else "never heard from"
            raise AgentTimeout(
                f"{ticket.mac}: no {kind.__name__} within {timeout:.0f}s (the agent was {seen})"
            ) from None
        assert ev is not None
        if isinstance(ev, Failed) and kind is not Failed:
            raise AgentFailed(ev)
        return ev  # type: ignore[return-value]

    # -- state -----------------------------------------------------------------------------------------

    def _host(self, mac: str) -> _Host:
        host = self._hosts.get(mac)
        if host is None:
            host = self._hosts[mac] = _Host(mac, asyncio.Condition())
        return host

    def _revoke(self, host: _Host) -> None:
        """End the host's current boot (caller holds host.cond): its token and nonce stop working, and
        whoever waits for one of its unfinished jobs gets AgentFailed(BootCancelled) at once."""
        boot = host.boot
        if boot is None:
            return
        for queued in boot.all_jobs.values():
            if queued.status not in ("done", "failed"):
                queued.status = "failed"
                message = "the network boot was cancelled or replaced by a newer one before the job finished"
                self._emit(
                    host, Failed(host.mac, boot.id, queued.id, self.clock(), "boot", "BootCancelled", message)
                )
        boot.revoked = True
        boot.token = boot.nonce = None
        for grants, key in ((self._nonces, boot.nonce_digest), (self._tokens, boot.token_digest)):
            grant = grants.pop(key, None)
            if grant is not None:
                grant.revoked = True
        host.boot = None

    def _queue(self, host: _Host, boot: _Boot, job: Job) -> _Job:
        queued = _Job(uuid.uuid4().hex[:12], job)
        boot.jobs.append(queued)
        boot.all_jobs[queued.id] = queued
        if isinstance(job, Provision):
            self._spawn(self._prepare_image(host, boot, queued))
        else:
            queued.status = "ready"
        return queued

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prepare_image(self, host: _Host, boot: _Boot, queued: _Job) -> None:
        assert isinstance(queued.job, Provision)
        image = queued.job.image
        try:
            cached = await self.images.ensure(image.url, image.checksum)
        except ImageError as exc:
            async with host.cond:
                queued.status = "failed"
                self._emit(
                    host, Failed(host.mac, boot.id, queued.id, self.clock(), "image", exc.reason, exc.message)
                )
            return
        async with host.cond:
            queued.image = cached
            if queued.status == "queued":
                queued.status = "ready"
                self._resolve(host, boot, queued)
            host.cond.notify_all()

    def _emit(self, host: _Host, event: Event) -> None:
        """Record an event (caller holds host.cond) and wake every waiter."""
        host.events.append(event)
        del host.events[:-_MAX_EVENTS]
        if isinstance(event, Failed):
            LOG.warning("%s: %s failed: %s: %s", host.mac, event.step, event.reason, event.message)
        else:
            LOG.info("%s: %s", host.mac, type(event).__name__)
        host.cond.notify_all()

    # -- boot endpoints --------------------------------------------------------------------------------

    async def _chain(self, request: web.Request) -> web.Response:
        LOG.debug("chain script served")
        return web.Response(text=ipxe.chain_script(self.public_url))

    async def _host_script(self, request: web.Request) -> web.Response:
        try:
            mac = ipxe.normalize_mac(request.match_info["mac"])
        except ValueError:
            return web.Response(status=400, text="#!ipxe\necho bad MAC\nexit 1\n")
        host = self._hosts.get(mac)
        if host is not None:
            async with host.cond:
                boot = host.boot
                if boot and not boot.script_served and boot.nonce and boot.expires_at > self.clock():
                    boot.script_served = True
                    path = f"/v1/boot/{boot.nonce}/token.cpio"
                    self._emit(host, ScriptFetched(mac, boot.id, "", self.clock()))
                    script = ipxe.host_script(self.public_url, mac, path, self.config.kernel_args)
                    return web.Response(text=script)
        LOG.info("%s: iPXE script asked for with no boot armed (or already served): exit", mac)
        return web.Response(text=ipxe.exit_script(mac))

    async def _token_fragment(self, request: web.Request) -> web.Response:
        key = tokens.digest(request.match_info["nonce"])
        grant = self._nonces.get(key)
        if tokens.check(grant, self.clock()) is not tokens.Verdict.OK:
            return web.Response(status=404, text="no such boot\n")
        assert grant is not None
        host = self._host(grant.mac)
        async with host.cond:
            boot = host.boot
            if boot is None or boot.id != grant.boot_id or boot.token is None or not boot.script_served:
                return web.Response(status=404, text="no such boot\n")
            grant.used = True
            body = cpio.archive(
                cpio.with_parents([cpio.Entry("etc/capbm/token", boot.token.encode() + b"\n", 0o600)])
            )
            boot.token = boot.nonce = None  # handed out: from now on only the digest is kept
            boot.token_served = True
        return web.Response(body=body, content_type="application/octet-stream")

    async def _ramdisk(self, request: web.Request) -> web.StreamResponse:
        files = {"vmlinuz": self.config.kernel, "initramfs.gz": self.config.initramfs}
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    # -- agent endpoints -------------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> tuple[_Host, _Boot]:
        presented = tokens.bearer(request.headers.get("Authorization"))
        grant = self._tokens.get(tokens.digest(presented)) if presented else None
        verdict = tokens.check(grant, self.clock(), presented=presented is not None)
        if verdict is not tokens.Verdict.OK or grant is None:
            LOG.info("agent request refused: token %s", verdict.value)
            raise web.HTTPUnauthorized(text=f"token {verdict.value}\n")
        host = self._host(grant.mac)
        boot = host.boot
        if boot is None or boot.id != grant.boot_id or boot.revoked:
            raise web.HTTPUnauthorized(text="token revoked\n")
        boot.last_seen = self.clock()
        return host, boot

    async def _hello(self, request: web.Request) -> web.Response:
        host, boot = self._authorize(request)
        report = inventory.parse_report(await request.read())
        hello = {
            k: v
            for k, v in report.items()
            if not k.startswith(("disk.", "nic.", "cpu.", "memory.", "system."))
        }
        async with host.cond:
            boot.hardware = inventory.hardware(report)
            for queued in boot.jobs:
                if queued.status == "ready":
                    self._resolve(host, boot, queued)
            if not any(isinstance(e, AgentUp) and e.boot_id == boot.id for e in host.events):
                self._emit(
                    host, AgentUp(host.mac, boot.id, "", self.clock(), hello.get("kernel", ""), boot.hardware)
                )
        return web.Response(text="ok\n")

    async def _next(self, request: web.Request) -> web.Response:
        host, boot = self._authorize(request)
        deadline = self.clock() + self.config.poll_seconds
        async with host.cond:
            while True:
                if boot.revoked:
                    raise web.HTTPUnauthorized(text="token revoked\n")
                text = self._hand_out(host, boot)
                if text is not None:
                    return web.Response(text=text)
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return web.Response(text="job=wait\n")
                try:
                    await asyncio.wait_for(host.cond.wait(), remaining)
                except TimeoutError:
                    return web.Response(text="job=wait\n")

    def _hand_out(self, host: _Host, boot: _Boot) -> str | None:
        """The next job's instructions for the agent, if one is ready (caller holds host.cond)."""
        if boot.current is not None and boot.current.status == "running":
            return None  # one job at a time: the agent reports before it asks again
        while boot.jobs:
            queued = boot.jobs[0]
            if queued.status == "failed":
                boot.jobs.popleft()
                continue
            if queued.status != "ready":
                return None
            boot.jobs.popleft()
            lines = self._instructions(host, boot, queued)
            if lines is None:
                continue  # failed before reaching the agent (no disk matches, image too large)
            queued.status = "running"
            boot.current = queued
            self._emit(
                host, StepReport(host.mac, boot.id, queued.id, self.clock(), _kind(queued.job), "handed-out")
            )
            return "".join(f"{k}={v}\n" for k, v in lines)
        return None

    def _instructions(self, host: _Host, boot: _Boot, queued: _Job) -> list[tuple[str, str]] | None:
        job = queued.job
        lines = [("job", _kind(job)), ("job_id", queued.id)]
        if isinstance(job, Inspect):
            return lines
        if isinstance(job, Clean):
            return [*lines, ("mode", job.mode)]
        assert isinstance(job, Provision) and queued.image is not None
        if not self._resolve(host, boot, queued):
            return None
        disk = queued.disk
        assert disk is not None
        c = queued.image.checksum
        return [
            *lines,
            ("image_size", str(queued.image.size)),
            ("checksum_algo", c.algorithm),
            ("checksum", c.hexdigest),
            ("disk_by_path", disk.by_path),
            ("disk_serial", disk.serial),
            ("seed_files", " ".join(job.seed)),
        ]

    def _resolve(self, host: _Host, boot: _Boot, queued: _Job) -> bool:
        """Choose the root disk of a provision job once its image and the host's inventory are known;
        fail the job (before any agent sees it) when no disk fits. False: the job failed."""
        job = queued.job
        if not isinstance(job, Provision) or queued.image is None or boot.hardware is None:
            return True
        try:
            disk = choose_root_device(job.hints, boot.hardware.disks)
        except RootDeviceError as exc:
            self._fail_early(host, boot, queued, "resolve", exc.reason, exc.message)
            return False
        if not disk.by_path:
            message = f"{describe(disk)} has no by-path name the agent can find it by"
            self._fail_early(host, boot, queued, "resolve", "RootDeviceNotAddressable", message)
            return False
        if queued.image.size + CONFIG_DRIVE_BYTES + (1 << 20) > disk.size_bytes:
            message = (
                f"the image ({queued.image.size} bytes) and the 32 MiB config drive do not fit on "
                + describe(disk)
            )
            self._fail_early(host, boot, queued, "resolve", "ImageTooLarge", message)
            return False
        queued.disk = disk
        return True

    def _fail_early(
        self, host: _Host, boot: _Boot, queued: _Job, step: str, reason: str, message: str
    ) -> None:
        queued.status = "failed"
        self._emit(host, Failed(host.mac, boot.id, queued.id, self.clock(), step, reason, message))
        return None

    async def _report(self, request: web.Request) -> web.Response:
        host, boot = self._authorize(request)
        try:
            report = inventory.parse_report(await request.read())
        except ValueError as exc:
            raise web.HTTPRequestEntityTooLarge(max_size=inventory.MAX_REPORT_BYTES, actual_size=0) from exc
        queued = boot.all_jobs.get(report.get("job_id", ""))
        if queued is None:
            raise web.HTTPNotFound(text="no such job\n")
        async with host.cond:
            if queued.status in ("done", "failed"):
                return web.Response(text="ok\n")  # a retried final report
            event = self._event(host.mac, boot, queued, report)
            if event is not None:
                if isinstance(event, Failed):
                    queued.status = "failed"
                elif not isinstance(event, StepReport):
                    queued.status = "done"
                self._emit(host, event)
        return web.Response(text="ok\n")

    def _event(self, mac: str, boot: _Boot, queued: _Job, r: dict[str, str]) -> Event | None:
        now, kind = self.clock(), r.get("event")
        if kind == "step":
            detail = {k: v for k, v in r.items() if k not in ("job_id", "event", "step", "state")}
            return StepReport(mac, boot.id, queued.id, now, r.get("step", ""), r.get("state", ""), detail)
        if kind == "failed":
            return Failed(
                mac,
                boot.id,
                queued.id,
                now,
                r.get("step", ""),
                r.get("reason", "AgentFailed"),
                r.get("message", ""),
            )
        if kind == "inspected":
            hw = inventory.hardware(r)
            boot.hardware = hw
            return Inspected(mac, boot.id, queued.id, now, hw, inventory.number(r, "seconds"))
        if kind == "provisioned":
            assert queued.disk is not None
            return Provisioned(
                mac,
                boot.id,
                queued.id,
                now,
                disk=queued.disk,
                bytes=int(inventory.number(r, "bytes")),
                write_seconds=inventory.number(r, "write_seconds"),
                verify_seconds=inventory.number(r, "verify_seconds"),
                configdrive_seconds=inventory.number(r, "configdrive_seconds"),
                configdrive_partition=r.get("partition", ""),
                next=r.get("next", "reboot"),
            )
        if kind == "cleaned":
            disks = []
            i = 0
            while f"disk.{i}.by_path" in r:
                disks.append((r[f"disk.{i}.by_path"], r.get(f"disk.{i}.serial", "")))
                i += 1
            return Cleaned(
                mac, boot.id, queued.id, now, r.get("mode", ""), tuple(disks), inventory.number(r, "seconds")
            )
        return None

    def _running_job(self, request: web.Request, kind: type) -> tuple[_Host, _Boot, _Job]:
        host, boot = self._authorize(request)
        queued = boot.all_jobs.get(request.match_info["job"])
        if queued is None or queued.status != "running" or not isinstance(queued.job, kind):
            raise web.HTTPNotFound(text="no such running job\n")
        return host, boot, queued

    async def _image(self, request: web.Request) -> web.StreamResponse:
        _, _, queued = self._running_job(request, Provision)
        assert queued.image is not None
        return await self.image_response(request, queued.image)

    async def image_response(self, request: web.Request, image: CachedImage) -> web.StreamResponse:
        """The image bytes for an agent (a seam: the lab's transit-corruption test overrides it)."""
        return web.FileResponse(image.path)

    async def _seed(self, request: web.Request) -> web.Response:
        _, _, queued = self._running_job(request, Provision)
        assert isinstance(queued.job, Provision)
        name = request.match_info["name"]
        if name not in queued.job.seed:
            raise web.HTTPNotFound(text="no such seed file\n")
        return web.Response(body=queued.job.seed[name], content_type="application/octet-stream")


def _kind(job: Job) -> str:
    return {Inspect: "inspect", Provision: "provision", Clean: "clean"}[type(job)]
