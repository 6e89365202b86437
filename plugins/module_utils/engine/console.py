# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant VM's serial console as a libvirt stream, for a viewer outside this process.

Each viewer gets a connection of its own to the VM's host (any libvirt URI, remote ones too:
the stream travels over it), a non-blocking console stream opened with FORCE (a second viewer
takes the console over; libvirt ends the first one's stream), and its output delivered from
libvirt's event loop as it arrives. Nothing here blocks for long: reads happen only when
libvirt says the stream is readable, each read is at most READ_BYTES, and a callback reads at
most MAX_READS times before it returns to the loop.
"""

from __future__ import annotations

import contextlib
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

from ..core.errors import HostUnreachable, VceError, connection_failed, libvirt, libvirt_reason
from ..host.ownership import object_name, ownership_problem, read_owner

READ_BYTES = 4096
MAX_READS = 64
# A non-blocking send refused for a moment (the stream's buffer full) is retried this often.
SEND_TRIES = 50
SEND_PAUSE_S = 0.002
RUNNING = 1  # VIR_DOMAIN_RUNNING

_events_lock = threading.Lock()
_events_started = threading.Event()


def start_libvirt_events() -> None:
    """libvirt's default event loop, in one daemon thread of this process (started once).

    Stream callbacks run in it. It must be registered before the connections whose streams it
    serves are opened, so each console opens its own connection after this. The thread lives
    as long as the process: each turn waits in libvirt's poll for the next event."""
    with _events_lock:
        if _events_started.is_set():
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=run_libvirt_events, name="libvirt-events", daemon=True).start()
        _events_started.set()


def run_libvirt_events() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


class ConsoleStream:
    """One viewer's console of the tenant's VM `name` on the host at `uri`. `deliver` gets
    its output as it comes, then None once: the stream ended (the VM stopped, another viewer
    took the console over, the host went away)."""

    def __init__(
        self, uri: str, tenant: str, name: str, deliver: Callable[[bytes | None], None]
    ) -> None:
        self.uri = uri
        self.tenant = tenant
        self.name = name
        self.deliver = deliver
        self.connection: object | None = None
        self.stream: object | None = None
        self.ended = False
        self.lock = threading.Lock()

    def open(self) -> None:
        """Connect, check the domain is the tenant's running VM, open its console with FORCE.
        Raises VceError naming the VM (never the host) when it cannot."""
        if libvirt is None:
            raise VceError("the libvirt Python bindings are missing on the server")
        start_libvirt_events()
        # libvirt prints every error to stderr by default; the caller reports them itself.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            self.connection = libvirt.open(self.uri)
            domain = self.connection.lookupByName(object_name(self.tenant, self.name))
            problem = ownership_problem(
                read_owner(ET.fromstring(domain.XMLDesc(0))),
                self.tenant,
                "vm",
                object_name(self.tenant, self.name),
            )
            if problem:
                raise VceError(f"vm {self.name} is not available")
            if domain.state()[0] != RUNNING:
                raise VceError(f"vm {self.name} is not running: start it first")
            self.stream = self.connection.newStream(libvirt.VIR_STREAM_NONBLOCK)
            domain.openConsole(None, self.stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            events = (
                libvirt.VIR_STREAM_EVENT_READABLE
                | libvirt.VIR_STREAM_EVENT_ERROR
                | libvirt.VIR_STREAM_EVENT_HANGUP
            )
            self.stream.eventAddCallback(events, self.on_event, None)
        except libvirt.libvirtError as error:
            self.close()
            failure = HostUnreachable if connection_failed(error) else VceError
            raise failure(
                f"the console of vm {self.name} could not be opened: {libvirt_reason(error)}"
            ) from None
        except VceError:
            self.close()
            raise

    def on_event(self, stream: object, events: int, _opaque: object) -> None:
        """In libvirt's event loop: read what is there (bounded), or note the end."""
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            for _turn in range(MAX_READS):
                try:
                    data = stream.recv(READ_BYTES)
                except libvirt.libvirtError:
                    data = b""
                if data == -2:  # nothing more for now
                    return
                if not data:
                    self.end()
                    return
                self.deliver(data)
            return
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self.end()

    def end(self) -> None:
        with self.lock:
            if self.ended:
                return
            self.ended = True
            if self.stream is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self.stream.eventRemoveCallback()
        self.deliver(None)

    def send(self, data: bytes) -> None:
        """Keystrokes to the VM; a stream that has ended takes nothing (its viewer is told by
        the None already delivered)."""
        view = memoryview(data)
        for _turn in range(SEND_TRIES):
            if self.ended or self.stream is None or not view:
                return
            try:
                sent = self.stream.send(bytes(view))
            except libvirt.libvirtError:
                self.end()
                return
            if sent == -2:
                time.sleep(SEND_PAUSE_S)
                continue
            view = view[sent:]

    def close(self) -> None:
        """The stream and the connection closed; safe to call twice and after a failure."""
        stream, self.stream = self.stream, None
        with self.lock:
            self.ended = True
        if stream is not None:
            with contextlib.suppress(libvirt.libvirtError):
                stream.eventRemoveCallback()
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(libvirt.libvirtError):
                connection.close()
