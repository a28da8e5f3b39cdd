"""Build the deploy ramdisk (kernel + busybox initramfs with the agent) from Debian packages, cached.

    python -m capi_provider.bootserver.ramdisk.build [--cache DIR] [--print-path]

The recipe (package names, their exact versions as apt resolves them, the module list, and the sources
of the init, agent and this builder) is hashed into a key; `<cache>/ramdisk/<key>/` holds `vmlinuz`,
`initramfs.gz` and `manifest.json`. An existing build with the same key is reused, so the ramdisk is rebuilt
only when the recipe changes. Packages are fetched with `apt-get download` (nothing is installed on this
machine) into `<cache>/debs/` and unpacked with `dpkg-deb`. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capi_provider.bootserver import cpio, elfdeps, kmods

HERE = Path(__file__).resolve().parent
KERNEL_META = "linux-image-amd64"

# util-linux tools the agent needs beyond busybox (GPT-aware partitioning, signature wiping and probing)
# and the shared libraries they link; `needed()` proves at build time that nothing is missing.
TOOL_PACKAGES = (
    "busybox-static",
    "fdisk",
    "util-linux",
    "dosfstools",
    "libfdisk1",
    "libsmartcols1",
    "libuuid1",
    "libblkid1",
    "libtinfo6",
    "libreadline8",
    "libc6",
)
TOOLS = ("sfdisk", "wipefs", "blkid", "mkfs.fat")
# Virtual hardware of the lab and the common real storage/NIC drivers; dependencies are added by the
# build. af_packet (udhcpc's raw socket) and nls_base are built into Debian's kernel.
MODULES = (
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "dmi_sysfs",
    "vfat",
    "nls_cp437",
    "nls_utf8",
    "nls_ascii",  # vfat's default iocharset in Debian's kernel
)


def log(msg: str) -> None:
    print(f"[ramdisk] {msg}", file=sys.stderr, flush=True)


def cache_root(cache: str | None = None) -> Path:
    base = cache or os.environ.get("CAPBM_CACHE") or "~/.cache/capi-provider-baremetal"
    return Path(base).expanduser()


@dataclass(frozen=True)
class Debs:
    """Exact .deb files apt resolves for package names: file name -> sha256 (part of the recipe key)."""

    files: dict[str, str] = field(default_factory=dict)
    uris: dict[str, str] = field(default_factory=dict)


def _apt(*args: str) -> str:
    return subprocess.run(["apt-get", *args], check=True, capture_output=True, text=True).stdout


def _apt_retry_after_update(*args: str) -> str:
    try:
        return _apt(*args)
    except subprocess.CalledProcessError:
        log("apt-get failed; running apt-get update once")
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        return _apt(*args)


def kernel_package() -> str:
    out = subprocess.run(
        ["apt-cache", "depends", KERNEL_META], check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise RuntimeError(f"apt-cache depends {KERNEL_META} names no versioned kernel package")


def resolve(packages: Iterable[str]) -> Debs:
    """The exact files `apt-get download` would fetch, with their sha256 (no download)."""
    out = _apt_retry_after_update("download", "--print-uris", *packages)
    files, uris = {}, {}
    for line in out.splitlines():
        m = re.match(r"'(\S+)' (\S+\.deb) \d+ SHA256:([0-9a-f]{64})", line)
        if m:
            files[m.group(2)] = m.group(3)
            uris[m.group(2)] = m.group(1)
    if len(files) != len(list(packages)):
        raise RuntimeError(f"apt-get resolved {len(files)} .deb files for {len(list(packages))} packages")
    return Debs(files, uris)


def fetch(debs: Debs, cache: Path) -> dict[str, Path]:
    """Download the .deb files not in the cache yet; verify every file's sha256."""
    debdir = cache / "debs"
    debdir.mkdir(parents=True, exist_ok=True)
    missing = [name for name in debs.files if not (debdir / name).exists()]
    if missing:
        log(f"downloading {len(missing)} Debian package(s): {', '.join(n.split('_')[0] for n in missing)}")
        with tempfile.TemporaryDirectory(dir=debdir) as tmp:
            pkgs = [name.split("_")[0] + "=" + _unquote(name.split("_")[1]) for name in missing]
            # apt's sandbox user cannot write into a root-owned temp dir; the download is checked below.
            subprocess.run(
                ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *pkgs],
                cwd=tmp,
                check=True,
                capture_output=True,
            )
            for name in missing:
                found = next(Path(tmp).glob(name.split("_")[0] + "_*.deb"), None)
                if found is None:
                    raise RuntimeError(f"apt-get download did not produce {name}")
                found.rename(debdir / name)
    paths = {}
    for name, sha in debs.files.items():
        path = debdir / name
        if hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            path.unlink()
            raise RuntimeError(f"{name}: sha256 differs from what apt announced (removed; run again)")
        paths[name] = path
    return paths


def _unquote(version: str) -> str:
    return version.replace("%3a", ":")


def unpack(deb: Path, dest: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)


def find_file(root: Path, name: str, dirs: Iterable[str]) -> Path:
    for d in dirs:
        p = root / d / name
        if p.exists() or p.is_symlink():
            return p
    raise FileNotFoundError(f"{name} not found under {root} in {list(dirs)}")


_LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib")
_BIN_DIRS = ("sbin", "usr/sbin", "bin", "usr/bin")
_TOOL_DIR = "usr/lib/capbm"


def _real(root: Path, path: Path) -> Path:
    """Follow symlinks inside the unpacked tree (absolute links are relative to `root`)."""
    for _ in range(20):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise RuntimeError(f"symlink loop at {path}")


def tool_entries(root: Path, tools: Iterable[str]) -> list[cpio.Entry]:
    """The tools and every shared library they need (transitively), kept apart from the standard library
    paths, with a wrapper per tool under usr/sbin that runs it through its own loader.

    Apart because busybox is a static glibc binary: its name-service lookups dlopen() from the standard
    paths, and a shared libc.so.6 found there crashes it (wget segfaulted with the libraries in /lib).
    """
    entries: list[cpio.Entry] = []
    libs: dict[str, bytes] = {}
    todo: list[bytes] = []
    for tool in tools:
        data = _real(root, find_file(root, tool, _BIN_DIRS)).read_bytes()
        entries.append(cpio.Entry(f"{_TOOL_DIR}/bin/{tool}", data, 0o755))
        wrapper = (
            f"#!/bin/sh\nexec /{_TOOL_DIR}/lib/ld-linux-x86-64.so.2 --library-path /{_TOOL_DIR}/lib "
            f'/{_TOOL_DIR}/bin/{tool} "$@"\n'
        )
        entries.append(cpio.Entry(f"usr/sbin/{tool}", wrapper.encode(), 0o755))
        todo.append(data)
    while todo:
        for soname in elfdeps.needed(todo.pop()):
            if soname in libs:
                continue
            data = _real(root, find_file(root, soname, _LIB_DIRS)).read_bytes()
            libs[soname] = data
            todo.append(data)
    if "ld-linux-x86-64.so.2" not in libs:
        raise RuntimeError("the tools name no dynamic loader")
    for soname, data in sorted(libs.items()):
        entries.append(cpio.Entry(f"{_TOOL_DIR}/lib/{soname}", data, 0o755))
    return entries


def module_entries(root: Path, wanted: Iterable[str]) -> tuple[list[cpio.Entry], list[str]]:
    """The module files (flat under lib/modules/) and their load order."""
    moddir = next((root / "lib/modules").iterdir())
    builtin = {
        kmods.canonical(Path(line.strip()).name.split(".ko")[0])
        for line in (moddir / "modules.builtin").read_text().splitlines()
        if line.strip()
    }
    files = {kmods.canonical(p.name.split(".ko")[0]): p for p in moddir.rglob("*.ko")}
    if not files:
        raise RuntimeError(f"no uncompressed .ko modules under {moddir}")

    def depends(name: str) -> list[str]:
        if name in builtin:
            return []
        if name not in files:
            raise RuntimeError(f"kernel module {name} is neither built in nor shipped in {moddir.name}")
        deps = kmods.modinfo(files[name].read_bytes(), "depends") or ""
        return [kmods.canonical(d) for d in deps.split(",") if d]

    order = [m for m in kmods.load_order(wanted, depends) if m not in builtin]
    entries = [cpio.Entry(f"lib/modules/{m}.ko", files[m].read_bytes()) for m in order]
    return entries, order


def sources() -> dict[str, bytes]:
    return {name: (HERE / name).read_bytes() for name in ("init", "agent.sh", "udhcpc.script", "build.py")}


@dataclass(frozen=True)
class Recipe:
    kernel_deb: str
    debs: dict[str, str]
    modules: tuple[str, ...]
    tools: tuple[str, ...]
    sources: dict[str, str]

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Ramdisk:
    """A built ramdisk on disk."""

    dir: Path
    key: str

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.dir / "initramfs.gz"

    @property
    def manifest(self) -> dict[str, object]:
        return json.loads((self.dir / "manifest.json").read_text())


def ensure(cache: str | None = None, *, force: bool = False) -> Ramdisk:
    """The ramdisk for the current recipe, built if the cache has none."""
    root = cache_root(cache)
    log("resolving the recipe (kernel and tool packages as apt sees them)")
    kpkg = kernel_package()
    debs = resolve([kpkg, *TOOL_PACKAGES])
    kernel_deb = next(name for name in debs.files if name.startswith(kpkg + "_"))
    recipe = Recipe(
        kernel_deb=kernel_deb,
        debs=dict(sorted(debs.files.items())),
        modules=MODULES,
        tools=TOOLS,
        sources={k: hashlib.sha256(v).hexdigest() for k, v in sorted(sources().items())},
    )
    key = recipe.key()
    out = root / "ramdisk" / key
    built = Ramdisk(out, key)
    if not force and (out / "manifest.json").exists():
        log(f"cached: {out}")
        return built
    started = time.monotonic()
    paths = fetch(debs, root)
    with tempfile.TemporaryDirectory(prefix="capbm-ramdisk-") as tmp:
        tree = Path(tmp) / "tree"
        for name, path in paths.items():
            log(f"unpacking {name}")
            unpack(path, tree)
        log("collecting the kernel, modules, busybox and util-linux tools")
        kernel = next((tree / "boot").glob("vmlinuz-*"))
        mod_entries, order = module_entries(tree, MODULES)
        busybox = _real(tree, find_file(tree, "busybox", _BIN_DIRS)).read_bytes()
        if elfdeps.needed(busybox):
            raise RuntimeError("busybox from busybox-static is not static")
        version = kernel.name.removeprefix("vmlinuz-")
        entries = [
            cpio.Entry("init", sources()["init"], 0o755),
            cpio.Entry("bin/busybox", busybox, 0o755),
            cpio.Entry("bin/sh", kind="symlink", target="busybox"),
            cpio.Entry("capbm/agent.sh", sources()["agent.sh"], 0o755),
            cpio.Entry("etc/capbm/udhcpc.script", sources()["udhcpc.script"], 0o755),
            cpio.Entry("etc/capbm/modules", "".join(f"{m}\n" for m in order).encode()),
            cpio.Entry("etc/capbm/recipe", f"{key} kernel {version}\n".encode()),
            *tool_entries(tree, TOOLS),
            *mod_entries,
            *(cpio.Entry(d, kind="dir", mode=0o755) for d in ("proc", "sys", "dev", "tmp", "run", "mnt")),
        ]
        archive = cpio.archive(cpio.with_parents(entries))
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copyfile(kernel, staging / "vmlinuz")
        (staging / "initramfs.gz").write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
        manifest = {
            "key": key,
            "kernel_version": version,
            "modules": order,
            "recipe": asdict(recipe),
            "kernel_bytes": (staging / "vmlinuz").stat().st_size,
            "initramfs_bytes": (staging / "initramfs.gz").stat().st_size,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    log(
        f"built {out} in {time.monotonic() - started:.0f}s: kernel {version}, "
        f"initramfs {manifest['initramfs_bytes'] // 1024} KiB, {len(order)} modules"
    )
    return built


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cache", help="cache directory (default $CAPBM_CACHE or ~/.cache/capi-provider-baremetal)"
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the cache has this recipe")
    p.add_argument("--print-path", action="store_true", help="print the build directory on stdout")
    args = p.parse_args(argv)
    built = ensure(args.cache, force=args.force)
    if args.print_path:
        print(built.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
