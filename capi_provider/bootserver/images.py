"""Images from operators' URLs: downloaded once, checksum-verified, cached, served to agents from disk.

Blocking I/O (urllib, hashing, file writes) runs in a worker thread with a deadline; concurrent requests
for the same image share one download. A download whose bytes do not match the checksum is deleted, never
served, and reported as ImageChecksumMismatch; anything that prevents reading the URL is ImageUnreachable.
Messages name the URL without credentials or query string (pre-signed URLs carry secrets there).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from capi_provider.bootserver.checksum import Checksum

_CHUNK = 1 << 20


class ImageError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def safe_url(url: str) -> str:
    """The URL as it may appear in messages: no user:password@, no query, no fragment."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class CachedImage:
    path: Path
    size: int
    checksum: Checksum


class ImageCache:
    def __init__(
        self,
        directory: Path,
        *,
        timeout: float = 1800.0,
        read_timeout: float = 60.0,
        allow_file_urls: bool = False,
    ) -> None:
        """`allow_file_urls`: only for a lab or a trusted operator; image URLs come from users' templates,
        and a file:// URL would make the boot server read its own files."""
        self.directory = directory
        self.allow_file_urls = allow_file_urls
        self.timeout = timeout
        self.read_timeout = read_timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self.downloads = 0  # how many times a URL was actually fetched (tests check "once")

    @staticmethod
    def key(url: str, checksum: Checksum) -> str:
        return hashlib.sha256(f"{url}\n{checksum}".encode()).hexdigest()[:32]

    async def ensure(self, url: str, checksum: Checksum) -> CachedImage:
        key = self.key(url, checksum)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = await asyncio.to_thread(self._cached, key, checksum)
            if cached is not None:
                return cached
            try:
                return await asyncio.wait_for(
                    asyncio.to_thread(self._download, url, checksum, key), self.timeout
                )
            except TimeoutError:
                raise ImageError(
                    "ImageUnreachable", f"{safe_url(url)} did not download within {self.timeout:.0f}s"
                ) from None

    def _cached(self, key: str, checksum: Checksum) -> CachedImage | None:
        path, meta = self.directory / f"{key}.raw", self.directory / f"{key}.json"
        try:
            info = json.loads(meta.read_text())
            if info["checksum"] == str(checksum) and path.stat().st_size == info["size"]:
                return CachedImage(path, info["size"], checksum)
        except (OSError, ValueError, KeyError):
            pass
        return None

    def _download(self, url: str, checksum: Checksum, key: str) -> CachedImage:
        self.directory.mkdir(parents=True, exist_ok=True)
        scheme = urllib.parse.urlsplit(url).scheme
        allowed = ("http", "https", "file") if self.allow_file_urls else ("http", "https")
        if scheme not in allowed:
            raise ImageError(
                "ImageUnreachable", f"{safe_url(url)}: only {', '.join(allowed)} URLs are allowed"
            )
        tmp = self.directory / f"{key}.part.{os.getpid()}"
        hasher = checksum.hasher()
        size = 0
        deadline = time.monotonic() + self.timeout
        self.downloads += 1
        try:
            with urllib.request.urlopen(url, timeout=self.read_timeout) as src, tmp.open("wb") as out:
                while chunk := src.read(_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                    if time.monotonic() > deadline:
                        raise TimeoutError
                out.flush()
                os.fsync(out.fileno())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            tmp.unlink(missing_ok=True)
            detail = getattr(exc, "reason", None) or exc.__class__.__name__
            raise ImageError("ImageUnreachable", f"cannot download {safe_url(url)}: {detail}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if not checksum.matches(hasher.hexdigest()):
            tmp.unlink(missing_ok=True)
            raise ImageError(
                "ImageChecksumMismatch",
                f"{safe_url(url)} ({size} bytes) does not match its {checksum.algorithm} checksum; "
                "nothing was written to any disk",
            )
        if size == 0:
            tmp.unlink(missing_ok=True)
            raise ImageError("ImageUnreachable", f"{safe_url(url)} is empty")
        path = self.directory / f"{key}.raw"
        tmp.rename(path)
        (self.directory / f"{key}.json").write_text(json.dumps({"checksum": str(checksum), "size": size}))
        return CachedImage(path, size, checksum)
