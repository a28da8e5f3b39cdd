"""Build the lab's small OS disk image (raw, MBR, one FAT partition with syslinux, a Debian kernel and a
busybox initramfs whose init consumes the NoCloud seed), cached like the deploy ramdisk.

    PYTHONPATH=hack:. python -m lab.smallos.build [--print-path]

Everything is done on plain files: sfdisk writes the partition table into the image file, mkfs.fat builds
the filesystem at its offset inside it, the mtools-based syslinux installer and mcopy write into that
offset, and syslinux's MBR code goes into the first 440 bytes. No loop device, no mount, and never a
bootloader installer pointed at anything but the image file (one found the host's own disk once).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from capi_provider.bootserver import cpio, elfdeps
from capi_provider.bootserver.ramdisk import build as rd

HERE = Path(__file__).resolve().parent
IMAGE_MIB = 64
PART_START = 2048  # sectors: 1 MiB
MODULES = ("virtio_pci", "virtio_scsi", "virtio_blk", "sd_mod", "vfat", "nls_cp437", "nls_utf8", "nls_ascii")
SYSLINUX_CFG = """DEFAULT smallos
PROMPT 0
TIMEOUT 0
LABEL smallos
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND console=ttyS0,115200 quiet
"""
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")


def log(msg: str) -> None:
    print(f"[smallos] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class SmallOs:
    dir: Path
    key: str

    @property
    def image(self) -> Path:
        return self.dir / "disk.img"

    @property
    def manifest(self) -> dict[str, object]:
        return json.loads((self.dir / "manifest.json").read_text())

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])


def _run(*argv: str | Path) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True)


def _regular_file(path: Path) -> Path:
    """Guard for every tool that writes boot code: it gets our image file, never a device."""
    if not path.is_file() or path.is_symlink():
        raise RuntimeError(f"refusing to install a bootloader into {path}: not a regular file")
    return path


def ensure(cache: str | None = None, *, force: bool = False, label: str = "dos") -> SmallOs:
    """The small OS image with an MBR (`dos`) or a GPT (`gpt`: the partition is marked legacy-BIOS-bootable
    and syslinux's gptmbr.bin boots it, as cloud images that boot under BIOS do)."""
    if label not in ("dos", "gpt"):
        raise ValueError("label is dos or gpt")
    mbr_bin = MBR_BIN if label == "dos" else MBR_BIN.with_name("gptmbr.bin")
    root = rd.cache_root(cache)
    kpkg = rd.kernel_package()
    debs = rd.resolve([kpkg, "busybox-static"])
    tools = {}
    for tool in ("sfdisk", "mkfs.fat", "syslinux", "mcopy"):
        path = shutil.which(tool) or next(
            (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / tool).exists()), None
        )
        if path is None:
            raise RuntimeError(f"{tool} is missing: run hack/install-system-deps.sh")
        tools[tool] = path
    recipe = {
        "debs": dict(sorted(debs.files.items())),
        "modules": MODULES,
        "init": hashlib.sha256((HERE / "init").read_bytes()).hexdigest(),
        "build": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "syslinux_cfg": SYSLINUX_CFG,
        "mbr": hashlib.sha256(mbr_bin.read_bytes()).hexdigest(),
        "image_mib": IMAGE_MIB,
        "label": label,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    out = root / "smallos" / key
    built = SmallOs(out, key)
    if not force and (out / "manifest.json").exists():
        log(f"cached: {out}")
        return built
    started = time.monotonic()
    paths = rd.fetch(debs, root)
    with tempfile.TemporaryDirectory(prefix="capbm-smallos-") as tmp:
        tree = Path(tmp) / "tree"
        for name, path in paths.items():
            log(f"unpacking {name}")
            rd.unpack(path, tree)
        kernel = next((tree / "boot").glob("vmlinuz-*"))
        mod_entries, order = rd.module_entries(tree, MODULES)
        busybox = rd._real(tree, rd.find_file(tree, "busybox", ("bin", "usr/bin"))).read_bytes()
        if elfdeps.needed(busybox):
            raise RuntimeError("busybox is not static")
        initrd = gzip.compress(
            cpio.archive(
                cpio.with_parents(
                    [
                        cpio.Entry("init", (HERE / "init").read_bytes(), 0o755),
                        cpio.Entry("bin/busybox", busybox, 0o755),
                        cpio.Entry("bin/sh", kind="symlink", target="busybox"),
                        cpio.Entry("etc/smallos/modules", "".join(f"{m}\n" for m in order).encode()),
                        *mod_entries,
                    ]
                )
            ),
            mtime=0,
        )
        files = Path(tmp) / "files"
        files.mkdir()
        shutil.copyfile(kernel, files / "vmlinuz")
        (files / "initrd.gz").write_bytes(initrd)
        (files / "syslinux.cfg").write_text(SYSLINUX_CFG)

        image = Path(tmp) / "disk.img"
        with image.open("wb") as f:
            f.truncate(IMAGE_MIB << 20)
        sectors = (IMAGE_MIB << 20) // 512 - PART_START
        part_sectors = sectors if label == "dos" else sectors - 40  # GPT: room for the backup header
        log("partitioning, formatting and installing syslinux into the image file")
        subprocess.run(
            [tools["sfdisk"], "-q", str(_regular_file(image))],
            input=f"label: {label}\nstart={PART_START}, size={part_sectors}, "
            + ("type=c, bootable\n" if label == "dos" else "type=L, attrs=LegacyBIOSBootable\n"),
            text=True,
            check=True,
            capture_output=True,
        )
        offset = PART_START * 512
        _run(tools["mkfs.fat"], "-n", "SMALLOS", "--offset", str(PART_START), "-h", str(PART_START),
             _regular_file(image), str(part_sectors // 2))  # fmt: skip
        _run(tools["syslinux"], "--install", "--offset", str(offset), _regular_file(image))
        for name in ("vmlinuz", "initrd.gz", "syslinux.cfg"):
            _run(tools["mcopy"], "-o", "-i", f"{image}@@{offset}", files / name, f"::/{name}")
        with _regular_file(image).open("r+b") as f:
            f.write(mbr_bin.read_bytes()[:440])
        digest = hashlib.sha256(image.read_bytes()).hexdigest()
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        image.rename(staging / "disk.img")
        manifest = {
            "key": key,
            "label": label,
            "sha256": digest,
            "size": IMAGE_MIB << 20,
            "modules": order,
            "recipe": recipe,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    log(f"built {out} in {time.monotonic() - started:.0f}s")
    return built


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache")
    p.add_argument("--force", action="store_true")
    p.add_argument("--print-path", action="store_true")
    p.add_argument("--label", choices=("dos", "gpt"), default="dos")
    args = p.parse_args(argv)
    built = ensure(args.cache, force=args.force, label=args.label)
    if args.print_path:
        print(built.image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
