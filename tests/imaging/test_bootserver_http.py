"""The boot server over real HTTP on loopback, driven by a scripted agent that speaks the ramdisk agent's
protocol (the real agent runs in the VM tests). Covers the one-time script and token, token scoping between
hosts (a wrong token gets neither another host's script, seed nor reports), expiry, image download/caching
and checksum failure, hint failure, and that no secret reaches the logs."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from capi_provider.bootserver import (
    AgentFailed,
    AgentTimeout,
    AgentUp,
    BootServer,
    BootServerConfig,
    Clean,
    Cleaned,
    ImageSpec,
    Inspect,
    Inspected,
    NoAgent,
    Provision,
    Provisioned,
    RootDeviceHints,
    ScriptFetched,
    Seed,
    parse_checksum,
)

MAC_A, MAC_B = "52:54:00:aa:00:01", "52:54:00:bb:00:02"
GIB = 1 << 30
INVENTORY = (
    "cpu.arch=x86_64\ncpu.count=4\nmemory.physical_mib=8192\n"
    "disk.0.name=sda\ndisk.0.size_bytes={small}\ndisk.0.rotational=1\ndisk.0.serial=DATA1\n"
    "disk.0.by_path=pci-0000:00:04.0-scsi-0:0:0:0\n"
    "disk.1.name=sdb\ndisk.1.size_bytes={big}\ndisk.1.rotational=0\ndisk.1.serial=OS1\n"
    "disk.1.by_path=pci-0000:00:04.0-scsi-0:0:1:0\n"
    "nic.0.name=eth0\nnic.0.mac={mac}\nnic.0.link=1\nnic.0.speed_mbps=25000\n"
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def image_site(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """An operator's image server on loopback: serves one raw image, counts GETs."""
    data = bytes(range(256)) * 4096  # 1 MiB
    root = tmp_path / "site"
    root.mkdir()
    (root / "os.raw").write_bytes(data)
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **kw)  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/os.raw", data
    finally:
        srv.shutdown()
        srv.server_close()


@asynccontextmanager
async def boot_server(tmp_path: Path, **overrides: object) -> AsyncIterator[BootServer]:
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initramfs.gz").write_bytes(b"initramfs")
    config = BootServerConfig(
        public_url="http://placeholder",
        kernel=tmp_path / "vmlinuz",
        initramfs=tmp_path / "initramfs.gz",
        image_dir=tmp_path / "images",
        poll_seconds=0.5,
        **overrides,  # type: ignore[arg-type]
    )
    server = BootServer(config)
    await server.start()
    server.public_url = f"http://127.0.0.1:{server.port}"
    try:
        yield server
    finally:
        await server.stop()


def _cpio_file(archive: bytes, name: str) -> bytes:
    pos = 0
    while pos < len(archive):
        header = archive[pos : pos + 110]
        namesize, filesize = int(header[94:102], 16), int(header[54:62], 16)
        fname = archive[pos + 110 : pos + 110 + namesize - 1].decode()
        data_at = (pos + 110 + namesize + 3) & ~3
        if fname == name:
            return archive[data_at : data_at + filesize]
        pos = (data_at + filesize + 3) & ~3
    raise KeyError(name)


class Agent:
    """What the ramdisk does over HTTP, scripted."""

    def __init__(self, http: aiohttp.ClientSession, server: BootServer, mac: str) -> None:
        self.http, self.url, self.mac, self.token = http, server.public_url, mac, ""

    async def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.get(self.url + path, headers=headers) as r:
            return r.status, await r.read()

    async def post(self, path: str, body: str, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token if token is not None else self.token}"}
        async with self.http.post(self.url + path, data=body.encode(), headers=headers) as r:
            return r.status

    async def netboot(self) -> str:
        status, script = await self.get(f"/ipxe/{self.mac.replace(':', '-')}")
        assert status == 200
        m = re.search(r"initrd --name token.cpio \S+?(/v1/boot/\S+)", script.decode())
        assert m, script
        status, fragment = await self.get(m.group(1))
        assert status == 200
        self.token = _cpio_file(fragment, "etc/capbm/token").decode().strip()
        return m.group(1)

    async def hello(self, small: int = 96 << 20, big: int = 4 * GIB) -> None:
        inv = INVENTORY.format(small=small, big=big, mac=self.mac)
        assert await self.post("/v1/agent/hello", "kernel=6.1\n" + inv) == 200

    async def next(self) -> dict[str, str]:
        status, body = await self.get("/v1/agent/next", self.token)
        assert status == 200, body
        return dict(line.split("=", 1) for line in body.decode().splitlines())


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 60))


def _provision(url: str, data: bytes, serial: str = "OS1", digest: str | None = None) -> Provision:
    checksum = parse_checksum("sha256:" + (digest or hashlib.sha256(data).hexdigest()))
    seed = Seed({"meta-data": b"instance-id: i-1\n", "user-data": b"#cloud-config\nsecret: s3cr3t-value\n"})
    return Provision(ImageSpec(url, checksum), RootDeviceHints(serial_number=serial), seed)


def test_the_script_is_served_once_and_only_to_the_armed_mac(tmp_path: Path) -> None:
    async def body() -> None:
        async with boot_server(tmp_path) as server, aiohttp.ClientSession() as http:
            ticket = await server.expect(MAC_A, Inspect())
            other = Agent(http, server, MAC_B)
            _, script = await other.get(f"/ipxe/{MAC_B}")
            assert b"exit 1" in script and b"token.cpio" not in script  # nothing armed for B
            a = Agent(http, server, MAC_A)
            nonce_path = await a.netboot()
            assert (await server.wait_for(ticket, ScriptFetched, 5)).mac == MAC_A
            _, again = await a.get(f"/ipxe/{MAC_A}")
            assert b"exit 1" in again  # one-time: a second fetch (or anyone else's) gets nothing
            status, _ = await a.get(nonce_path)
            assert status == 404  # the token fragment is one-time too
            assert a.token and a.token not in nonce_path and a.token == ticket.token
            status, _ = await a.get("/ipxe/not-a-mac")
            assert status == 400

    run(body())


def test_a_token_reaches_only_its_own_hosts_jobs(tmp_path: Path, image_site: tuple[str, bytes]) -> None:
    url, data = image_site

    async def body() -> None:
        async with boot_server(tmp_path) as server, aiohttp.ClientSession() as http:
            ticket_a = await server.expect(MAC_A, _provision(url, data))
            await server.expect(MAC_B, Inspect())
            a, b = Agent(http, server, MAC_A), Agent(http, server, MAC_B)
            await a.netboot()
            await b.netboot()
            await a.hello()
            await b.hello()
            job_a = await a.next()
            assert job_a["job"] == "provision"
            seed_path = f"/v1/agent/seed/{job_a['job_id']}/user-data"
            image_path = f"/v1/agent/image/{job_a['job_id']}"
            # B's valid token does not open A's seed or image, nor report for A's job.
            assert (await b.get(seed_path, b.token))[0] == 404
            assert (await b.get(image_path, b.token))[0] == 404
            report = f"job_id={job_a['job_id']}\nevent=failed\nstep=write\nreason=Forged\nmessage=x\n"
            assert await b.post("/v1/agent/report", report) == 404
            # No token, a wrong token, or B's script path: nothing.
            assert (await a.get(seed_path))[0] == 401
            assert (await a.get(seed_path, "not-the-token"))[0] == 401
            assert (await a.get("/v1/agent/next", a.token[:-1] + "x"))[0] == 401
            # A's own token does.
            status, seed = await a.get(seed_path, a.token)
            assert status == 200 and seed.startswith(b"#cloud-config")
            status, image = await a.get(image_path, a.token)
            assert status == 200 and image == data
            assert not [e for e in server.events(MAC_A) if getattr(e, "reason", "") == "Forged"]
            assert ticket_a.token != b.token

    run(body())


def test_tokens_expire_and_a_new_boot_revokes_the_old_one(tmp_path: Path) -> None:
    async def body() -> None:
        async with boot_server(tmp_path, token_ttl=600.0) as server, aiohttp.ClientSession() as http:
            clock = FakeClock()
            server.clock = clock
            await server.expect(MAC_A, Inspect())
            a = Agent(http, server, MAC_A)
            await a.netboot()
            await a.hello()
            assert server.agent_up(MAC_A)
            clock.now += 601
            assert (await a.get("/v1/agent/next", a.token))[0] == 401
            assert not server.agent_up(MAC_A)
            with pytest.raises(NoAgent):
                await server.submit(MAC_A, Inspect())
            # An armed boot whose script nobody fetched expires as well.
            await server.expect(MAC_A, Inspect())
            clock.now += 601
            assert b"exit 1" in (await a.get(f"/ipxe/{MAC_A}"))[1]
            # Re-arming revokes the previous boot's token at once, and its waiters learn why.
            replaced = await server.expect(MAC_A, Inspect())
            await a.netboot()
            old = a.token
            waiter = asyncio.ensure_future(server.wait_for(replaced, Inspected, 30))
            await server.expect(MAC_A, Inspect())
            assert (await a.get("/v1/agent/next", old))[0] == 401
            with pytest.raises(AgentFailed) as err:
                await waiter
            assert err.value.reason == "BootCancelled"

    run(body())


def test_provisioning_protocol_and_image_downloaded_once(
    tmp_path: Path, image_site: tuple[str, bytes]
) -> None:
    url, data = image_site

    async def body() -> None:
        async with boot_server(tmp_path) as server, aiohttp.ClientSession() as http:
            ticket = await server.expect(MAC_A, _provision(url, data))
            a = Agent(http, server, MAC_A)
            await a.netboot()
            await a.hello()
            up = await server.wait_for(ticket, AgentUp, 5)
            assert up.hardware.cpu_count == 4 and up.hardware.disks[1].serial == "OS1"
            job = await a.next()
            # The hinted disk (serial OS1) is named by by-path and serial, never by kernel name.
            assert job["disk_by_path"] == "pci-0000:00:04.0-scsi-0:0:1:0" and job["disk_serial"] == "OS1"
            assert "sdb" not in job.values()
            assert job["checksum_algo"] == "sha256" and job["image_size"] == str(len(data))
            assert job["seed_files"] == "meta-data user-data"
            assert (await a.next())["job"] == "wait"  # one job at a time
            done = (
                f"job_id={job['job_id']}\nevent=provisioned\nbytes={len(data)}\nwrite_seconds=1.5\n"
                "partition=sdb2\n"
            )
            assert await a.post("/v1/agent/report", done) == 200
            assert await a.post("/v1/agent/report", done) == 200  # a retried report is harmless
            event = await server.wait_for(ticket, Provisioned, 5)
            assert event.disk.serial == "OS1" and event.bytes == len(data) and event.write_seconds == 1.5
            assert (await a.get(f"/v1/agent/seed/{job['job_id']}/meta-data", a.token))[0] == 404  # job over
            # More work for the agent that is up, without a reboot; the image is not fetched again.
            ticket2 = await server.submit(MAC_A, _provision(url, data))
            job2 = await a.next()
            assert job2["job_id"] == ticket2.job_id
            assert server.images.downloads == 1
            ticket3 = await server.submit(MAC_A, Clean("metadata"))
            fail = (
                f"job_id={job2['job_id']}\nevent=failed\nstep=verify\n"
                "reason=WrittenImageChecksumMismatch\nmessage=m\n"
            )
            assert await a.post("/v1/agent/report", fail) == 200
            with pytest.raises(AgentFailed) as err:
                await server.wait_for(ticket2, Provisioned, 5)
            assert err.value.reason == "WrittenImageChecksumMismatch"
            job3 = await a.next()
            assert job3 == {"job": "clean", "job_id": ticket3.job_id, "mode": "metadata"}
            cleaned = (
                f"job_id={job3['job_id']}\nevent=cleaned\nmode=metadata\n"
                "disk.0.by_path=p0\ndisk.0.serial=DATA1\n"
            )
            assert await a.post("/v1/agent/report", cleaned) == 200
            assert (await server.wait_for(ticket3, Cleaned, 5)).disks == (("p0", "DATA1"),)

    run(body())


def test_a_wrong_checksum_fails_before_any_agent_sees_the_job(
    tmp_path: Path, image_site: tuple[str, bytes]
) -> None:
    url, data = image_site

    async def body() -> None:
        async with boot_server(tmp_path) as server, aiohttp.ClientSession() as http:
            ticket = await server.expect(
                MAC_A, _provision(url, data, digest=hashlib.sha256(b"other").hexdigest())
            )
            a = Agent(http, server, MAC_A)
            await a.netboot()
            await a.hello()
            with pytest.raises(AgentFailed) as err:
                await server.wait_for(ticket, Provisioned, 10)
            assert err.value.reason == "ImageChecksumMismatch"
            assert "nothing was written" in err.value.message
            assert (await a.next())["job"] == "wait"  # the agent never gets the job
            assert not list((tmp_path / "images").glob("*.raw"))  # and nothing bad is cached

    run(body())


def test_no_disk_matching_the_hints_is_a_clear_failure(tmp_path: Path, image_site: tuple[str, bytes]) -> None:
    url, data = image_site

    async def body() -> None:
        async with boot_server(tmp_path) as server, aiohttp.ClientSession() as http:
            ticket = await server.expect(MAC_A, _provision(url, data, serial="NO-SUCH-DISK"))
            a = Agent(http, server, MAC_A)
            await a.netboot()
            await a.hello()
            assert (await a.next())["job"] == "wait"
            with pytest.raises(AgentFailed) as err:
                await server.wait_for(ticket, Provisioned, 5)
            assert err.value.reason == "NoDiskMatchesHints"
            assert "OS1" in err.value.message and "DATA1" in err.value.message
            # An image that does not fit the hinted disk (plus the config drive) fails the same way.
            ticket = await server.submit(MAC_A, _provision(url, data))
            await a.hello(big=len(data) + (16 << 20))
            with pytest.raises(AgentFailed) as err:
                await server.wait_for(ticket, Provisioned, 5)
            assert err.value.reason == "ImageTooLarge"

    run(body())


def test_unreachable_images_and_timeouts_say_why_without_secrets(tmp_path: Path) -> None:
    async def body() -> None:
        async with boot_server(tmp_path) as server:
            url = "http://user:hunter2@127.0.0.1:9/os.raw?X-Amz-Signature=topsecret"
            ticket = await server.expect(MAC_A, _provision(url, b"x"))
            with pytest.raises(AgentFailed) as err:
                await server.wait_for(ticket, Provisioned, 10)
            assert err.value.reason == "ImageUnreachable"
            assert "127.0.0.1:9/os.raw" in err.value.message
            assert "hunter2" not in err.value.message and "topsecret" not in err.value.message
            # file:// is off unless configured: a user's template must not make the server read its files.
            ticket = await server.expect(MAC_A, _provision("file:///etc/hostname", b"x"))
            with pytest.raises(AgentFailed) as err:
                await server.wait_for(ticket, Provisioned, 10)
            assert err.value.reason == "ImageUnreachable" and "only http, https" in err.value.message
            ticket = await server.expect(MAC_B, Inspect())
            with pytest.raises(AgentTimeout) as timeout:
                await server.wait_for(ticket, AgentUp, 0.2)
            assert "never heard from" in timeout.value.message and timeout.value.reason == "AgentTimeout"

    run(body())


def test_no_token_nonce_or_seed_in_the_logs(
    tmp_path: Path, image_site: tuple[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    url, data = image_site
    caplog.set_level(logging.DEBUG)

    async def body() -> tuple[str, str]:
        async with boot_server(tmp_path) as server, aiohttp.ClientSession() as http:
            ticket = await server.expect(MAC_A, _provision(url, data, serial="NONE"))
            a = Agent(http, server, MAC_A)
            nonce_path = await a.netboot()
            await a.hello()
            await a.get("/v1/agent/next", "wrong-token")
            with pytest.raises(AgentFailed):
                await server.wait_for(ticket, Provisioned, 5)
            assert repr(ticket).count(a.token) == 0
            return a.token, nonce_path.split("/")[3]

    token, nonce = run(body())
    text = caplog.text
    assert caplog.records  # the server did log
    for secret in (token, nonce, "s3cr3t-value", "wrong-token"):
        assert secret not in text
