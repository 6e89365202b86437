"""A tiny bootable test guest, built from Debian packages at test time and cached.

The guest is a Debian cloud kernel plus a busybox initramfs on a FAT16 disk booted by
syslinux. Its /init loads the virtio drivers, takes a DHCP lease on eth0 and prints
``VCE-GUEST: ip=<address>`` on the serial console, then serves HTTP on port 80 (busybox
httpd) and idles until it is told to stop: SIGTERM/SIGUSR1/SIGUSR2 to PID 1 or the ACPI
power button (``virsh shutdown``) power it off.

What the guest serves, so tests can send real packets to it and make it send some:

* ``GET /``: ``<hostname> <address>`` (the hostname from the DHCP lease, else ``tinyguest``),
  rewritten on every lease.
* ``GET /cgi-bin/fetch?<url>``: the body of ``wget`` of an ``http://`` URL (the query, which
  may be percent-encoded), or status 502 with wget's error: shows the source address the
  guest's outbound connections get outside.
* ``GET /cgi-bin/ping?<ipv4>``: the output of ``ping -c 1 -W 2 <ipv4>``, status 502 if no
  reply came.
* ``GET /cgi-bin/disk?<vdX>``: the md5 of the block device's first 64 MiB;
  ``?<vdX>,<offset>,<count>`` first writes ``count`` MiB of random data at ``offset`` MiB
  (synced): a guest writing known data to its disk, for the backup tests.

Everything comes from apt (``apt-get download``) and tools of the host (sfdisk, dosfstools,
mtools, syslinux, qemu-img); no root-only steps (loop devices, mounts) are needed.

CLI::

    python -m tools.tinyguest build [--cache DIR]    # prints the qcow2 base image path
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Bump whenever the recipe below changes what ends up in the image: it is part of the key.
RECIPE_VERSION = 7

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# Applets /init, the udhcpc hook and the CGI scripts rely on; checked at build time so a
# busybox without one fails the build instead of the guest failing silently at run time.
REQUIRED_APPLETS = ("acpid", "hostname", "httpd", "insmod", "ip", "mktemp", "ping", "poweroff")
REQUIRED_APPLETS += ("sh", "timeout", "udhcpc", "wget", "dd", "md5sum", "sync", "cut")
# Loaded by /init in this order (each after its dependencies); evdev + button come first:
# they turn the ACPI power button into an input event that busybox acpid acts on.
GUEST_MODULES = ("evdev", "button", "virtio_pci", "virtio_net", "virtio_blk")

MARKER = "VCE-GUEST:"
MARKER_IP_RE = re.compile(re.escape(MARKER) + r" ip=(\d+\.\d+\.\d+\.\d+)")
KERNEL_CMDLINE = "console=ttyS0,115200 quiet loglevel=3"

SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
MBR_BOOT_CODE_SIZE = 440  # the rest of sector 0 is the partition table
SECTOR = 512
PARTITION_START = 2048  # sectors: 1 MiB, the usual alignment
DISK_SLACK_MIB = 8  # free room on the FAT partition beyond kernel + initrd
MIN_DISK_MIB = 32  # FAT16 wants some thousands of clusters

LOCK_TIMEOUT = 600.0
COMMAND_TIMEOUT = 600


class TinyGuestError(RuntimeError):
    """Building the tiny guest failed."""


@dataclass(frozen=True)
class Package:
    """A Debian package at a definite version."""

    name: str
    version: str


# --------------------------------------------------------------------------------------------
# running commands


def _run(
    argv: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> str:
    """Run a command and return its stdout; raise TinyGuestError with stderr on failure."""
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT,
    )
    if proc.returncode != 0:
        raise TinyGuestError(
            f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout


def _apt_update() -> None:
    _run(["apt-get", "update", "-qq"])


# --------------------------------------------------------------------------------------------
# apt: which packages, at which versions


def _apt_show(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Candidate stanzas of packages by name ({} when apt's lists do not have them all)."""
    try:
        out = _run(["apt-cache", "show", "--no-all-versions", *names])
    except TinyGuestError:
        return {}
    stanzas: dict[str, dict[str, str]] = {}
    for block in out.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): ?(.*)$", block, re.MULTILINE))
        if "Package" in fields:
            stanzas[fields["Package"]] = fields
    return stanzas


def _resolve_once() -> list[Package] | None:
    """Kernel and busybox at apt's candidate versions, in one (slow, ~1 s) apt-cache call."""
    stanzas = _apt_show([KERNEL_METAPACKAGE, BUSYBOX_PACKAGE])
    meta, busybox = stanzas.get(KERNEL_METAPACKAGE), stanzas.get(BUSYBOX_PACKAGE)
    if meta is None or busybox is None:
        return None
    # The metapackage pins its kernel exactly, e.g. "linux-image-6.1.0-56-cloud-amd64 (= X)".
    match = re.search(r"(linux-image-\S+-cloud-amd64) \(= ([^)\s]+)\)", meta.get("Depends", ""))
    if match is None:
        raise TinyGuestError(f"cannot read the kernel from {KERNEL_METAPACKAGE}: {meta}")
    return [Package(match.group(1), match.group(2)), Package(BUSYBOX_PACKAGE, busybox["Version"])]


def _apt_lists_signature() -> str:
    """Changes whenever apt's idea of candidate versions may change (lists, pinning)."""
    parts = []
    for pattern in ("/var/lib/apt/lists/*Packages*", "/etc/apt/preferences*"):
        for path in sorted(Path("/").glob(pattern.lstrip("/"))):
            info = path.stat()
            parts.append(f"{path}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _memo_path(cache_dir: Path) -> Path:
    return cache_dir / "resolved.json"


def _memo_load(cache_dir: Path, signature: str) -> list[Package] | None:
    try:
        memo = json.loads(_memo_path(cache_dir).read_text())
    except (OSError, ValueError):
        return None
    if memo.get("signature") != signature:
        return None
    return [Package(name, version) for name, version in memo["packages"]]


def _memo_store(cache_dir: Path, signature: str, packages: list[Package]) -> None:
    memo = {"signature": signature, "packages": [[p.name, p.version] for p in packages]}
    tmp = _memo_path(cache_dir).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(memo))
    os.replace(tmp, _memo_path(cache_dir))


def resolve_packages(cache_dir: Path | None = None) -> list[Package]:
    """The kernel and busybox packages to use, refreshing apt's lists only if they lack them.

    With cache_dir, the answer is remembered until apt's lists change: asking apt-cache costs
    about a second here, which would dominate the cached path of build_base_image().
    """
    signature = _apt_lists_signature()
    if cache_dir is not None and (memo := _memo_load(cache_dir, signature)) is not None:
        return memo
    packages = _resolve_once()
    if packages is None:
        _apt_update()
        signature = _apt_lists_signature()
        packages = _resolve_once()
    if packages is None:
        raise TinyGuestError(f"apt knows no {KERNEL_METAPACKAGE} / {BUSYBOX_PACKAGE}")
    if cache_dir is not None:
        _memo_store(cache_dir, signature, packages)
    return packages


def cache_key(packages: Iterable[Package]) -> str:
    """Short stable key naming an image built from these packages with this recipe."""
    parts = [f"{p.name}={p.version}" for p in packages]
    parts.append(f"recipe={RECIPE_VERSION}")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# apt: downloading the .debs (kept in the cache so recipe changes do not download again)


def _deb_field(deb: Path, field: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), field]).strip()


def _cached_deb_path(debs_dir: Path, package: Package) -> Path:
    safe_version = re.sub(r"[^A-Za-z0-9.+~-]", "_", package.version)
    return debs_dir / f"{package.name}_{safe_version}.deb"


def _apt_download(package: Package, dest: Path) -> Path:
    """apt-get download one package into the empty directory dest; return the .deb."""
    argv = [
        "apt-get",
        "download",
        "-q",
        # apt's _apt user cannot write into our directories; skip its sandbox.
        "-o",
        "APT::Sandbox::User=root",
        f"{package.name}={package.version}",
    ]
    try:
        _run(argv, cwd=dest)
    except TinyGuestError:
        # Lists may be missing or stale (the version vanished from the mirror): refresh once.
        _apt_update()
        _run(argv, cwd=dest)
    debs = list(dest.glob("*.deb"))
    if len(debs) != 1:
        raise TinyGuestError(f"apt-get download {package.name} left {debs}")
    return debs[0]


def fetch_deb(package: Package, debs_dir: Path) -> Path:
    """Return a cached .deb of package, downloading it when absent."""
    target = _cached_deb_path(debs_dir, package)
    if target.exists():
        return target
    debs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=debs_dir, prefix=".dl-") as tmp:
        deb = _apt_download(package, Path(tmp))
        got = Package(_deb_field(deb, "Package"), _deb_field(deb, "Version"))
        if got != package:
            raise TinyGuestError(f"asked apt for {package}, got {got}")
        os.replace(deb, target)  # atomic: a cached .deb is always complete
    return target


# --------------------------------------------------------------------------------------------
# kernel modules


def _read_module(path: Path) -> bytes:
    """Module bytes, decompressing .ko.xz (the cloud kernel currently ships plain .ko)."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise TinyGuestError(f"unsupported module compression: {path}")


def _module_name(path: Path) -> str:
    """Kernel module name of a file: no suffix, '-' spelt '_' as the kernel does."""
    return path.name.split(".ko")[0].replace("-", "_")


def _elf_section(data: bytes, wanted: str) -> bytes:
    """Contents of the section named wanted in a little-endian ELF64 object."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise TinyGuestError("not a little-endian ELF64 module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        (name,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    strtab_offset = header(shstrndx)[1]
    for index in range(shnum):
        name_offset, offset, size = header(index)
        start = strtab_offset + name_offset
        name = data[start : data.index(b"\0", start)].decode()
        if name == wanted:
            return data[offset : offset + size]
    raise TinyGuestError(f"no {wanted} section")


def module_depends(data: bytes) -> list[str]:
    """The 'depends=' list of a module's .modinfo (what modules.dep would be built from).

    The kernel .deb ships no modules.dep (depmod makes it on install), so read the source.
    """
    for entry in _elf_section(data, ".modinfo").split(b"\0"):
        if entry.startswith(b"depends="):
            value = entry[len(b"depends=") :].decode()
            return [name.replace("-", "_") for name in value.split(",") if name]
    return []


def index_modules(modules_root: Path) -> dict[str, Path]:
    """Map module name -> file for every module under a lib/modules/<version> tree."""
    index: dict[str, Path] = {}
    for path in modules_root.rglob("*.ko*"):
        index[_module_name(path)] = path
    return index


def modules_in_load_order(wanted: Iterable[str], index: dict[str, Path]) -> list[str]:
    """wanted plus everything they depend on, each after its dependencies."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise TinyGuestError(f"module dependency cycle at {name}")
        if name not in index:
            raise TinyGuestError(f"module {name} not in the kernel package")
        visiting.add(name)
        for dep in module_depends(_read_module(index[name])):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


# --------------------------------------------------------------------------------------------
# initramfs: a cpio "newc" archive written here (cpio(1) is often not installed)


@dataclass(frozen=True)
class CpioEntry:
    """One archive member: data is file contents or a symlink's target."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _newc_member(ino: int, entry: CpioEntry) -> bytes:
    name = entry.path.encode() + b"\0"
    fields = (
        ino,
        entry.mode,
        0,  # uid root
        0,  # gid root
        2 if stat.S_ISDIR(entry.mode) else 1,
        0,  # mtime: fixed so equal inputs give equal archives
        len(entry.data),
        0,
        0,
        entry.rdev[0],
        entry.rdev[1],
        len(name),
        0,  # checksum, unused by "newc"
    )
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    head = header + name
    return head + _pad4(len(head)) + entry.data + _pad4(len(entry.data))


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Serialise entries (parents before children) as a newc archive with its trailer."""
    chunks = [_newc_member(ino, entry) for ino, entry in enumerate(entries, start=1)]
    chunks.append(_newc_member(0, CpioEntry("TRAILER!!!", 0)))
    return b"".join(chunks)


def _directory(path: str) -> CpioEntry:
    return CpioEntry(path, stat.S_IFDIR | 0o755)


def _file(path: str, data: bytes, mode: int = 0o644) -> CpioEntry:
    return CpioEntry(path, stat.S_IFREG | mode, data)


def _symlink(path: str, target: str) -> CpioEntry:
    return CpioEntry(path, stat.S_IFLNK | 0o777, target.encode())


INIT_SCRIPT = r"""#!/bin/sh
# PID 1 of the tiny test guest (built by tools/tinyguest.py).
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
say() { echo "VCE-GUEST: $*"; }
uptime() { read -r up idle < /proc/uptime; echo "uptime=$up"; }
say "init $(uptime)"
# A shell as PID 1 ignores these signals unless it traps them.
trap 'say poweroff; poweroff -f' TERM USR1 USR2
for m in $(cat /etc/modules); do
    insmod "/lib/modules/$m.ko" || say "insmod $m failed"
done
# ACPI power button (virsh shutdown): acpid runs /etc/acpi/PWRF/00000080. QEMU drops a
# press while the guest has not enabled the button event (until button.ko loads), so load
# it first and start acpid before the network: shutdown works from here on.
n=0
while [ ! -e /dev/input/event0 ] && [ $n -lt 20 ]; do sleep 0.1; n=$((n + 1)); done
acpid -c /etc/acpi -l /dev/null || say "acpid failed"
hostname tinyguest
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
ip link set eth0 up || say "no eth0"
n=0
until udhcpc -i eth0 -s /etc/udhcpc.script -n -t 5 -T 1 >/dev/null 2>&1; do
    n=$((n + 1))
    if [ $n -ge 6 ]; then say "dhcp failed"; break; fi
done
# -f: stay a child of this shell; daemonised, httpd would be orphaned with no pid to report.
# CGI scripts inherit httpd's environment, so PATH=/bin above is theirs too.
httpd -f -p 80 -h /www &
httpd_pid=$!
sleep 0.2
if kill -0 "$httpd_pid" 2>/dev/null; then say "httpd pid=$httpd_pid"; else say "httpd failed"; fi
say "ready $(uptime)"
# wait (unlike a foreground sleep) returns at once when a trapped signal arrives.
while :; do sleep 86400 & wait $!; done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc hook: apply the lease and report a new address on the console.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/"; then
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        echo "VCE-GUEST: ip=$ip" > /dev/console
    fi
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    if [ -n "$hostname" ]; then hostname "$hostname"; fi
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    # The page httpd serves at /: renamed into place so a request never sees half of it.
    echo "$(hostname) $ip" > /www/index.html.new && mv /www/index.html.new /www/index.html
    ;;
esac
exit 0
"""

POWER_BUTTON_SCRIPT = """#!/bin/sh
# Run by acpid on the ACPI power button: same path as SIGTERM to PID 1.
kill -TERM 1
"""


# CGI scripts (busybox httpd runs them with QUERY_STRING set, and turns a "Status:" header
# into the status line). The query is data only: quoted everywhere, never evaluated.
FETCH_CGI = r"""#!/bin/sh
# GET /cgi-bin/fetch?<http://url>: wget the URL from the guest, return its body.
reply() { printf 'Status: %s\r\nContent-Type: text/plain\r\n\r\n' "$1"; }
url=$(httpd -d "$QUERY_STRING")
case "$url" in
http://*) ;;
*) reply "400 Bad Request"; echo "query must be an http:// URL"; exit 0 ;;
esac
case "$url" in
*[!A-Za-z0-9._~:/?=%+-]*) reply "400 Bad Request"; echo "unexpected character in URL"; exit 0 ;;
esac
body=$(mktemp) && errors=$(mktemp) || { reply "500 Internal Server Error"; exit 0; }
# timeout, not wget -T: Debian 12's busybox lacks FEATURE_WGET_TIMEOUT and its wget then
# dies of a NULL pointer write (SIGSEGV) when given -T.
timeout 5 wget -q -O - "$url" > "$body" 2> "$errors"
status=$?  # 143: timed out
if [ $status -eq 0 ]; then
    reply "200 OK"
    cat "$body"
else
    reply "502 Bad Gateway"
    echo "fetching $url failed (exit $status):"
    cat "$errors"
fi
rm -f "$body" "$errors"
"""

PING_CGI = r"""#!/bin/sh
# GET /cgi-bin/ping?<dotted quad>: one ping from the guest, return ping's output.
reply() { printf 'Status: %s\r\nContent-Type: text/plain\r\n\r\n' "$1"; }
bad() { reply "400 Bad Request"; echo "query must be an IPv4 address"; exit 0; }
addr=$QUERY_STRING
case "$addr" in
""|*[!0-9.]*|.*|*.|*..*) bad ;;
esac
# Only digits and dots are left, so this split cannot glob.
IFS=.
set -- $addr
unset IFS
[ $# -eq 4 ] || bad
for octet in "$@"; do
    case "$octet" in 0?*|????*) bad ;; esac  # no leading zeros (octal), at most 3 digits
    [ "$octet" -le 255 ] || bad
done
if out=$(ping -c 1 -W 2 "$addr" 2>&1); then reply "200 OK"; else reply "502 Bad Gateway"; fi
echo "$out"
"""

DISK_CGI = r"""#!/bin/sh
# GET /cgi-bin/disk?<vdX>[,<offset MiB>,<count MiB>]: write random data there first (synced),
# then return the md5 of the device's first 64 MiB (the whole of a 1 GiB disk takes too long
# under TCG).
reply() { printf 'Status: %s\r\nContent-Type: text/plain\r\n\r\n' "$1"; }
bad() { reply "400 Bad Request"; echo "query must be <vdX>[,<offset MiB>,<count MiB>]"; exit 0; }
case "$QUERY_STRING" in ""|*[!a-z0-9,]*) bad ;; esac
# Only letters, digits and commas are left, so this split cannot glob.
IFS=,
set -- $QUERY_STRING
unset IFS
case "$1" in vd[a-z]) ;; *) bad ;; esac
[ -b "/dev/$1" ] || { reply "404 Not Found"; echo "no /dev/$1"; exit 0; }
if [ $# -eq 3 ]; then
    case "$2" in ""|*[!0-9]*) bad ;; esac
    case "$3" in ""|*[!0-9]*) bad ;; esac
    if ! dd if=/dev/urandom of="/dev/$1" bs=1048576 seek="$2" count="$3" conv=fsync 2>/dev/null
    then
        reply "500 Internal Server Error"; echo "writing /dev/$1 failed"; exit 0
    fi
    sync
elif [ $# -ne 1 ]; then
    bad
fi
reply "200 OK"
dd if="/dev/$1" bs=1048576 count=64 2>/dev/null | md5sum | cut -d ' ' -f 1
"""


def _busybox_applets(busybox: Path) -> list[str]:
    applets = [name for name in _run([str(busybox), "--list"]).split() if name != "busybox"]
    missing = sorted(set(REQUIRED_APPLETS) - set(applets))
    if missing:
        raise TinyGuestError(f"{busybox} lacks applets the guest needs: {', '.join(missing)}")
    return applets


def initramfs_entries(busybox: Path, modules: list[tuple[str, bytes]]) -> Iterator[CpioEntry]:
    """Everything the guest's initramfs holds; modules are (name, bytes) in load order."""
    for path in ("bin", "dev", "etc", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules"):
        yield _directory(path)
    for path in ("proc", "sys", "run", "tmp", "var", "var/log", "www", "www/cgi-bin"):
        yield _directory(path)
    yield _symlink("var/run", "/run")
    yield _symlink("sbin", "bin")
    # The kernel opens /dev/console for /init before devtmpfs is mounted over /dev.
    yield CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    yield _file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in _busybox_applets(busybox):
        yield _symlink(f"bin/{applet}", "busybox")
    for name, data in modules:
        yield _file(f"lib/modules/{name}.ko", data)
    yield _file("etc/modules", "".join(f"{name}\n" for name, _data in modules).encode())
    yield _file("etc/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    yield _file("etc/acpi/PWRF/00000080", POWER_BUTTON_SCRIPT.encode(), 0o755)
    yield _file("www/cgi-bin/fetch", FETCH_CGI.encode(), 0o755)
    yield _file("www/cgi-bin/ping", PING_CGI.encode(), 0o755)
    yield _file("www/cgi-bin/disk", DISK_CGI.encode(), 0o755)
    yield _file("init", INIT_SCRIPT.encode(), 0o755)


def build_initramfs(busybox: Path, modules_root: Path, out: Path) -> None:
    """Write the gzip-compressed initramfs for the guest to out."""
    index = index_modules(modules_root)
    order = modules_in_load_order(GUEST_MODULES, index)
    modules = [(name, _read_module(index[name])) for name in order]
    archive = write_newc(initramfs_entries(busybox, modules))
    out.write_bytes(gzip.compress(archive, compresslevel=9, mtime=0))


# --------------------------------------------------------------------------------------------
# the bootable disk


SYSLINUX_CFG = f"""SERIAL 0 115200
DEFAULT tiny
PROMPT 0
TIMEOUT 0
LABEL tiny
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND {KERNEL_CMDLINE}
"""


def _disk_sectors(payload_bytes: int) -> int:
    mib = max(MIN_DISK_MIB, payload_bytes // (1 << 20) + DISK_SLACK_MIB + 1)
    return mib * (1 << 20) // SECTOR


def make_boot_disk(kernel: Path, initrd: Path, raw: Path) -> None:
    """Write a raw MBR disk whose FAT16 partition boots kernel + initrd through syslinux."""
    sectors = _disk_sectors(kernel.stat().st_size + initrd.stat().st_size)
    with raw.open("wb") as disk:
        disk.truncate(sectors * SECTOR)
    # type e: FAT16 (LBA); the bootable flag is what syslinux's mbr.bin looks for.
    layout = f"label: dos\nstart={PARTITION_START}, type=e, bootable\n"
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(raw)], stdin=layout)
    fs_kib = (sectors - PARTITION_START) * SECTOR // 1024
    offset = PARTITION_START * SECTOR
    _run(
        [
            "mkfs.vfat",
            "-F",
            "16",
            "-n",
            "TINYGUEST",
            "-i",
            "7e570001",  # fixed volume id instead of a random one
            "-h",
            str(PARTITION_START),  # hidden sectors = partition start, for the boot sector
            "--offset",
            str(PARTITION_START),
            str(raw),
            str(fs_kib),
        ]
    )
    work = raw.parent
    (work / "syslinux.cfg").write_text(SYSLINUX_CFG)
    shutil.copyfile(kernel, work / "vmlinuz")
    shutil.copyfile(initrd, work / "initrd.gz")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    image = f"{raw}@@{offset}"
    _run(["mcopy", "-i", image, "vmlinuz", "initrd.gz", "syslinux.cfg", "::/"], cwd=work, env=env)
    _run(["syslinux", "--offset", str(offset), "--install", str(raw)], env=env)
    with raw.open("r+b") as disk:
        disk.write(SYSLINUX_MBR.read_bytes()[:MBR_BOOT_CODE_SIZE])


# --------------------------------------------------------------------------------------------
# the cached base image


def default_cache_dir() -> Path:
    """$VCE_CACHE_DIR, else ~/.cache/vce-kvm/tinyguest."""
    env = os.environ.get("VCE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "vce-kvm" / "tinyguest"


@contextmanager
def _cache_lock(cache_dir: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Serialise builds across processes, so concurrent callers build once."""
    with (cache_dir / ".lock").open("a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TinyGuestError(f"timed out waiting for {cache_dir}/.lock") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _image_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"tinyguest-{key}.qcow2"


def _newest_cached_image(cache_dir: Path) -> Path | None:
    images = sorted(cache_dir.glob("tinyguest-*.qcow2"), key=lambda p: p.stat().st_mtime)
    return images[-1] if images else None


def _remove_scratch(cache_dir: Path) -> None:
    """Drop scratch dirs of interrupted builds; call only while holding the cache lock.

    Every build and download happens under the lock, so any scratch dir seen then is dead.
    """
    for scratch in (*cache_dir.glob(".build-*"), *cache_dir.glob("debs/.dl-*")):
        shutil.rmtree(scratch, ignore_errors=True)


def _prune_debs(debs_dir: Path, keep: list[Package]) -> None:
    """Forget .debs of older versions (images are kept: overlays may still use them)."""
    wanted = {_cached_deb_path(debs_dir, package) for package in keep}
    for deb in debs_dir.glob("*.deb"):
        if deb not in wanted:
            deb.unlink(missing_ok=True)


def _build(packages: list[Package], cache_dir: Path, image: Path) -> None:
    """Build the image in a scratch dir inside cache_dir, then rename it into place."""
    kernel_pkg, busybox_pkg = packages
    kernel_deb = fetch_deb(kernel_pkg, cache_dir / "debs")
    busybox_deb = fetch_deb(busybox_pkg, cache_dir / "debs")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
        work = Path(tmp)
        _run(["dpkg-deb", "-x", str(kernel_deb), str(work / "kernel")])
        _run(["dpkg-deb", "-x", str(busybox_deb), str(work / "busybox")])
        kernels = sorted((work / "kernel" / "boot").glob("vmlinuz-*"))
        # Debian moves /lib to /usr/lib in later releases; accept either.
        module_roots = [
            root
            for parent in ("lib/modules", "usr/lib/modules")
            for root in sorted((work / "kernel" / parent).glob("*"))
        ]
        if len(kernels) != 1 or len(module_roots) != 1:
            raise TinyGuestError(f"unexpected layout of {kernel_deb.name}")
        initrd = work / "initrd.img"
        build_initramfs(work / "busybox" / "bin" / "busybox", module_roots[0], initrd)
        disk_dir = work / "disk"
        disk_dir.mkdir()
        raw = disk_dir / "disk.raw"
        make_boot_disk(kernels[0], initrd, raw)
        qcow2 = work / "image.qcow2"
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)])
        os.replace(qcow2, image)  # same filesystem: readers see no image or a whole one


def build_base_image(cache_dir: Path | None = None) -> Path:
    """Return the path of the bootable qcow2 base image, building it when not cached.

    The cache key comes from the versions of the kernel and busybox packages apt offers and
    the recipe version. Use the image read-only (as a backing file of per-guest overlays).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        packages = resolve_packages(cache_dir)
    except (TinyGuestError, OSError, subprocess.SubprocessError):
        # Offline with no usable apt lists: an earlier build is better than none.
        fallback = _newest_cached_image(cache_dir)
        if fallback is None:
            raise
        print(f"tinyguest: apt unusable, using cached {fallback}", file=sys.stderr)
        return fallback
    image = _image_path(cache_dir, cache_key(packages))
    if image.exists():
        return image
    with _cache_lock(cache_dir):
        if not image.exists():  # another process may have built it while we waited
            _remove_scratch(cache_dir)
            _build(packages, cache_dir, image)
            _prune_debs(cache_dir / "debs", packages)
    return image


# --------------------------------------------------------------------------------------------
# helpers for tests that boot the guest


def console_ip(text: str) -> str | None:
    """The last address the guest reported on its console, None before its first lease."""
    found = MARKER_IP_RE.findall(text)
    return found[-1] if found else None


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.tinyguest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or find cached) the base image, print its path")
    build.add_argument("--cache", type=Path, default=None, help="cache directory")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build_base_image(args.cache))
    return 0


if __name__ == "__main__":
    sys.exit(main())
