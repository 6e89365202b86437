"""A stand-in for the commands the engine runs on a KVM host that change its networking
(`ip`, `nft`) or its services (`systemctl`), for unit tests: used as the host's command prefix
(`host_command`), it keeps a pretend host in a JSON file and answers the way those tools do
(JSON listings, errors on stderr with a non-zero exit). Every other command is run as it is.

Tests assert on what the engine decides and reads back, never on this file's state.

    host = StandInHost(tmp_path / "kvm-a", links={"up0": 1500})
    params["host_command"] = host.prefix
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path


class StandInHost:
    """The pretend host's state file and the command prefix that reaches it."""

    def __init__(self, path: Path, links: dict[str, int] | None = None) -> None:
        self.path = Path(path).with_suffix(".json")
        state = {
            "links": {
                name: {"mtu": mtu, "flags": ["UP"], "addrs": []}
                for name, mtu in (links or {}).items()
            },
            "tables": [],
            "rules": [],
            # Tables of family inet, replaced whole (host.firewall.NftTable): their listings.
            "inet": {},
            "next_handle": 1,
            "systemctl": [],
        }
        self.path.write_text(json.dumps(state))
        # A shell in front: only the stand-in's own tools pay for a Python start.
        self.dispatch = self.path.with_suffix(".sh")
        self.dispatch.write_text(
            "#!/bin/sh\n"
            'case "$1" in\n'
            f'  ip|nft|systemctl) exec {sys.executable} -I -S {__file__} {self.path} "$@" ;;\n'
            '  *) exec "$@" ;;\n'
            "esac\n"
        )
        self.dispatch.chmod(0o755)

    @property
    def prefix(self) -> list[str]:
        return [str(self.dispatch)]

    def change(self, edit) -> None:
        """Change the pretend host behind the engine's back (drift, a reboot)."""
        state = json.loads(self.path.read_text())
        edit(state)
        self.path.write_text(json.dumps(state))


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(message + "\n")
    sys.exit(code)


def link_json(name: str, link: dict) -> dict:
    shown = {"ifname": name, "mtu": link["mtu"], "flags": link["flags"]}
    if link.get("master"):
        shown["master"] = link["master"]
    if link.get("vxlan"):
        shown["linkinfo"] = {"info_kind": "vxlan", "info_data": link["vxlan"]}
    return shown


def addr_json(name: str, link: dict) -> dict:
    """A link's IPv4 addresses as `ip -j addr` shows them (an address without a prefix is a
    /32, as the public IPs on an uplink are)."""
    addrs = []
    for address in link["addrs"]:
        local, _slash, prefix = address.partition("/")
        addrs.append({"family": "inet", "local": local, "prefixlen": int(prefix or 32)})
    return {"ifname": name, "addr_info": addrs}


def ip(state: dict, args: list[str], stdin: str) -> object:
    links = state["links"]
    args = [a for a in args if a not in ("-d", "-4")]
    as_json = args[:1] == ["-j"]
    if as_json:
        args = args[1:]
    if args[:2] == ["-batch", "-"]:
        for line in stdin.splitlines():
            words = line.split()
            if not words:
                continue
            if words[:2] not in (["addr", "add"], ["addr", "del"]) or len(words) != 5:
                fail(f'Command "{line}" is unknown')
            address, dev = words[2].split("/")[0], words[4]
            if dev not in links:
                fail(f'Cannot find device "{dev}"')
            addrs = links[dev]["addrs"]
            if words[1] == "add":
                if address in addrs:
                    fail("RTNETLINK answers: File exists")
                addrs.append(address)
            elif address in addrs:
                addrs.remove(address)
            else:
                fail("RTNETLINK answers: Cannot assign requested address")
        return None
    if args[:2] == ["link", "show"]:
        if args[2:3] == ["dev"]:
            if args[3] not in links:
                fail(f'Device "{args[3]}" does not exist.')
            return [link_json(args[3], links[args[3]])]
        if args[2:4] == ["type", "vxlan"]:
            return [link_json(n, li) for n, li in sorted(links.items()) if li.get("vxlan")]
    if args[:3] == ["addr", "show", "dev"]:
        if args[3] not in links:
            fail(f'Device "{args[3]}" does not exist.')
        return [addr_json(args[3], links[args[3]])]
    if args == ["addr", "show"]:
        return [addr_json(name, link) for name, link in sorted(links.items())]
    if args == ["route", "show"]:
        return state.get("routes", [])
    if args[:2] == ["link", "add"] and args[3:5] == ["type", "vxlan"]:
        flags = {"nolearning"}
        name, words = args[2], [a for a in args[5:] if a not in flags]
        options = dict(zip(words[::2], words[1::2], strict=True))
        if name in links:
            fail("RTNETLINK answers: File exists")
        if options.get("dev") not in links:
            fail(f'Cannot find device "{options.get("dev")}"')
        links[name] = {
            "mtu": links[options["dev"]]["mtu"] - 50,
            "flags": [],
            "addrs": [],
            "vxlan": {
                "id": int(options["id"]),
                "local": options["local"],
                "remote": options["remote"],
                "port": int(options["dstport"]),
                "link": options["dev"],
                "learning": "nolearning" not in args,
            },
        }
        return None
    if args[:2] == ["link", "set"] and len(args) >= 4:
        link = links.get(args[2])
        if link is None:
            fail(f'Cannot find device "{args[2]}"')
        if args[3] == "up":
            link["flags"] = sorted({*link["flags"], "UP"})
        elif args[3] == "mtu":
            link["mtu"] = int(args[4])
        elif args[3] == "master":
            link["master"] = args[4]
        else:
            fail(f'Error: argument "{args[3]}" is wrong')
        return None
    if args[:2] == ["link", "del"]:
        if links.pop(args[2], None) is None:
            fail(f'Cannot find device "{args[2]}"')
        return None
    fail(f"ip: unknown command {' '.join(args)}")
    return None


RULE = re.compile(r"^add rule ip (\S+) (\S+) (.*?)(?: comment (\".*\"))?$")
DELETE = re.compile(r"^delete rule ip (\S+) (\S+) handle (\d+)$")


def whole_tables(state: dict, args: list[str], stdin: str) -> tuple[bool, str | None]:
    """The tables NftTable (host/firewall.py) keeps whole, by "family name": listed the way the
    kernel lists them, made by a real nft in a network namespace of its own (as NftTable's
    expected() does). Returns whether the command was one of theirs, and its output."""
    tables = state.setdefault("whole_tables", {})
    if args[:2] == ["list", "tables"] and len(args) == 3:
        return True, "".join(f"table {key}\n" for key in sorted(tables) if key.startswith(args[2]))
    if args[:3] == ["-s", "list", "table"]:
        key = " ".join(args[3:5])
        if key not in tables:
            fail(f"Error: No such file or directory\nlist table {key}")
        return True, tables[key]
    first, second, *rest = (stdin.splitlines() or [""]) + ["", ""]
    if args != ["-f", "-"] or not first.startswith("table inet "):
        return False, None
    key = first.split(" ", 1)[1]
    if second != f"delete table {key}":
        fail(f"Error: syntax error\n{second}")
    body = "\n".join(rest).strip()
    if not body:
        tables.pop(key, None)
        return True, None
    loaded = subprocess.run(
        ["unshare", "--net", "sh", "-c", f"nft -f - && nft -s list table {key}"],
        input=body + "\n", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if loaded.returncode != 0:
        fail(loaded.stderr.strip())
    tables[key] = loaded.stdout
    return True, None


def nft(state: dict, args: list[str], stdin: str) -> object:
    handled, shown = whole_tables(state, args, stdin)
    if handled:
        if shown is not None:
            sys.stdout.write(shown)
        return None
    if args == ["-j", "list", "ruleset", "ip"]:
        items: list[dict] = [{"metainfo": {"json_schema_version": 1}}]
        items += [{"table": {"family": "ip", "name": t, "handle": 1}} for t in state["tables"]]
        items += [{"rule": {"family": "ip", **rule}} for rule in state["rules"]]
        return {"nftables": items}
    if args == ["-f", "-"]:
        rules = [dict(r) for r in state["rules"]]
        tables = list(state["tables"])
        handle = state["next_handle"]
        for line in stdin.splitlines():
            line = line.strip()
            if line.startswith("table ip "):
                name = line.split()[2]
                if name not in tables:
                    tables.append(name)
                continue
            if not line or line.startswith(("chain ", "}")):
                continue
            found = DELETE.match(line)
            if found:
                table, chain, number = found.group(1), found.group(2), int(found.group(3))
                kept = [
                    r for r in rules
                    if (r["table"], r["chain"], r["handle"]) != (table, chain, number)
                ]  # fmt: skip
                if len(kept) == len(rules):
                    fail(f"Error: Could not process rule: No such file or directory\n{line}")
                rules = kept
                continue
            found = RULE.match(line)
            if not found:
                fail(f"Error: syntax error\n{line}")
            if found.group(1) not in tables:
                fail(f"Error: No such file or directory; did you mean table '{found.group(1)}'?")
            rule = {"table": found.group(1), "chain": found.group(2), "handle": handle}
            rule["expr"] = found.group(3)
            if found.group(4):
                rule["comment"] = json.loads(found.group(4))
            rules.append(rule)
            handle += 1
        state.update(rules=rules, tables=tables, next_handle=handle)  # all or nothing
        return None
    fail(f"nft: unknown command {' '.join(args)}")
    return None


def main() -> None:
    path, argv = Path(sys.argv[1]), sys.argv[2:]
    tool = os.path.basename(argv[0]) if argv else ""
    if tool not in ("ip", "nft", "systemctl"):
        os.execvp(argv[0], argv)
    state = json.loads(path.read_text())
    stdin = sys.stdin.read() if argv[1:] and argv[-1] == "-" else ""
    if tool == "systemctl":
        state["systemctl"].append(argv[1:])
        shown = None
    else:
        shown = (ip if tool == "ip" else nft)(state, argv[1:], stdin)
    path.write_text(json.dumps(state))
    if isinstance(shown, str):
        sys.stdout.write(shown)
    elif shown is not None:
        sys.stdout.write(json.dumps(shown))


if __name__ == "__main__":
    main()
