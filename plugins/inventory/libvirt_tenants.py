# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# Imports come after DOCUMENTATION, as ansible-test wants of plugins.
# ruff: noqa: E402
"""Ansible inventory vce.kvm.libvirt_tenants: the tenant VMs on several KVM hosts, read from
the ownership metadata vce.kvm gives every object, with their plans and public IPs from the
ledger. The reading is the engine's (module_utils.engine.listing); this adapts it to Ansible."""

from __future__ import annotations

DOCUMENTATION = r"""
name: libvirt_tenants
short_description: Tenant VMs on KVM hosts, grouped by tenant, zone and host
version_added: 0.1.0
author:
  - vce.kvm developers (!UNKNOWN)
description:
  - Lists every VM that vce.kvm created on the given KVM hosts, found by the ownership
    metadata and the tenant name prefix of its libvirt objects, over one libvirt connection
    per host.
  - Each VM is an inventory host named C(<tenant>.<vm>). When the same VM name of one tenant
    is found on several hosts (a copy left behind, a declaration applied to two hosts), each
    copy is listed as C(<tenant>.<vm>.<host>), so none hides another.
  - Groups - C(tenant_<tenant>), C(zone_<zone>) and C(host_<host name>), all children of
    C(vce_vms). Names are made safe for Ansible (characters other than letters, digits and
    C(_) become C(_)).
  - Host variables - C(vce_tenant), C(vce_vm), C(vce_zone), C(vce_host), C(vce_uri),
    C(vce_state) (the libvirt state - C(running), C(paused), C(shutoff)...), C(vce_vcpus),
    C(vce_memory_mib), C(vce_private_ips) (the NICs' reserved or leased addresses);
    with O(ledger_url) also C(vce_plan) (the tenant's plan, null when the tenant is not in
    the ledger), C(vce_blocked) (an operator block of this VM) and C(vce_public_ips) (the
    addresses bound to the VM). C(ansible_host) is the first public IP, else the first private
    IP; it is not set when the VM has neither.
  - The source is a YAML file whose name ends in C(.libvirt_tenants.yml) or
    C(.libvirt_tenants.yaml).
requirements:
  - libvirt-python on the controller
  - SQLAlchemy 2 and Alembic on the controller when O(ledger_url) is set (psycopg 3 for
    PostgreSQL)
extends_documentation_fragment:
  - ansible.builtin.constructed
  - ansible.builtin.inventory_cache
options:
  plugin:
    description: The name of this plugin; makes the file a source of this inventory.
    type: str
    required: true
    choices:
      - vce.kvm.libvirt_tenants
  hosts:
    description:
      - The KVM hosts to list, each read over its own libvirt connection.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description:
          - The host's name in the inventory (group C(host_<name>), variable C(vce_host)).
            Unique.
        type: str
        required: true
      uri:
        description:
          - The libvirt URI of the host, for example V(qemu+ssh://root@kvm1/system). Unique.
        type: str
        required: true
      zone:
        description:
          - The host's zone (group C(zone_<zone>), variable C(vce_zone)). Without it the VMs
            of this host are in no zone group.
        type: str
  tenants:
    description:
      - List only the VMs of these tenants. Default - every tenant.
    type: list
    elements: str
  ledger_url:
    description:
      - The ledger, as a database URL, that adds each tenant's plan, the operator's blocks and
        the public IPs to the host variables. Without it those variables are not set.
      - A public IP is the VM's on the host whose URI the run that bound it used; an address
        bound through a URI that is not in O(hosts) is matched by the host's O(hosts[].zone).
    type: str
  strict:
    description:
      - With V(false), a host that cannot be reached or read (and a ledger that cannot be
        read) is a warning that names it, and the other hosts are still listed.
      - With V(true), it fails the source with an error that names the host and its URI, and
        nothing of this source is listed (Ansible then reports the source as unparsed; set
        C(any_unparsed_is_failed) in the C([inventory]) section of C(ansible.cfg) to make that
        stop the run).
      - Also, as for every constructed inventory, V(true) makes a failing O(compose),
        O(groups) or O(keyed_groups) template an error instead of skipping it.
    type: bool
    default: false
notes:
  - With O(cache) enabled, a listing is served from the cache until it expires or until
    C(--flush-cache). A listing in which a host or the ledger could not be read is not cached,
    so the next run reads every host again.
  - Nothing is changed on the hosts. With O(ledger_url), the ledger's schema is created or
    migrated on first use, as by every vce.kvm module.
seealso:
  - module: vce.kvm.info
  - module: vce.kvm.environment
"""

EXAMPLES = r"""
# inventories/tenants.libvirt_tenants.yml
plugin: vce.kvm.libvirt_tenants
hosts:
  - name: kvm-ala-01
    uri: qemu+ssh://root@kvm-ala-01/system
    zone: ala
  - name: kvm-ast-01
    uri: qemu+ssh://root@kvm-ast-01/system
    zone: ast
ledger_url: postgresql+psycopg://vce@ledger.example/vce
keyed_groups:
  - key: vce_plan
    prefix: plan
groups:
  running: vce_state == 'running'
compose:
  ansible_user: "'debian'"
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/vce-kvm/inventory
cache_timeout: 300
"""

from typing import Any

from ansible.errors import AnsibleParserError
from ansible.inventory.group import to_safe_group_name
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine.listing import (
    Listing,
    host_vars,
    inventory_names,
    list_tenant_vms,
    parse_hosts,
    parse_tenants,
)

PARENT_GROUP = "vce_vms"
SUFFIXES = (".libvirt_tenants.yml", ".libvirt_tenants.yaml")


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "vce.kvm.libvirt_tenants"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith(SUFFIXES)

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        key = self.get_cache_key(path)
        use_cache = bool(self.get_option("cache"))
        vms = None
        if use_cache and cache:
            # A miss, an expired entry or --flush-cache (cache=False) reads the hosts again.
            vms = self._cache.get(key)
        if vms is None:
            listing = self.read_hosts()
            vms = listing.vms
            if use_cache and listing.complete:
                self._cache[key] = vms
        self.populate(vms)

    def read_hosts(self) -> Listing:
        try:
            listing = list_tenant_vms(
                parse_hosts(self.get_option("hosts")),
                parse_tenants(self.get_option("tenants")),
                self.get_option("ledger_url"),
                bool(self.get_option("strict")),
            )
        except VceError as error:
            raise AnsibleParserError(f"{self.NAME}: {error}") from None
        for warning in listing.warnings:
            self.display.warning(f"{self.NAME}: {warning}")
        return listing

    def populate(self, vms: list[dict[str, Any]]) -> None:
        strict = bool(self.get_option("strict"))
        self.inventory.add_group(PARENT_GROUP)
        for name, vm in zip(inventory_names(vms), vms, strict=True):
            vars_of = host_vars(vm)
            self.inventory.add_host(name)
            for group in self.groups_of(vm):
                self.inventory.add_group(group)
                self.inventory.add_child(PARENT_GROUP, group)
                self.inventory.add_child(group, name)
            for key, value in vars_of.items():
                self.inventory.set_variable(name, key, value)
            self._set_composite_vars(self.get_option("compose"), vars_of, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), vars_of, name, strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), vars_of, name, strict)

    def groups_of(self, vm: dict[str, Any]) -> list[str]:
        wanted = [f"tenant_{vm['tenant']}", f"host_{vm['host']}"]
        if vm["zone"]:
            wanted.append(f"zone_{vm['zone']}")
        # Tenant and host names hold '-' and '.': always replaced, whatever the Ansible
        # configuration says about invalid group characters, so the names stay predictable.
        return [to_safe_group_name(group, force=True, silent=True) for group in wanted]
