#!/usr/bin/python
# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: info
short_description: Read a tenant's networks, disks and VMs on a KVM host
version_added: 0.1.0
description:
  - Returns what the KVM host holds for one tenant - found by the ownership metadata and
    name prefix vce.kvm gives every object - without changing anything.
author:
  - vce.kvm developers (!UNKNOWN)
extends_documentation_fragment:
  - vce.kvm.common
  - vce.kvm.common.ledger
  - vce.kvm.common.info_attributes
options: {}
seealso:
  - module: vce.kvm.environment
"""

EXAMPLES = r"""
- name: What does acme have on this host?
  vce.kvm.info:
    tenant: acme
  register: acme

- name: Show the addresses of its VMs
  ansible.builtin.debug:
    msg: "{{ acme.vms | dict2items | map(attribute='value.nics') | flatten | map(attribute='ip') }}"
"""

RETURN = r"""
tenant:
  description: The tenant.
  returned: always
  type: str
networks:
  description: The tenant's networks by declared name.
  returned: always
  type: dict
  sample:
    lan: {libvirt_name: acme_lan, cidr: 10.10.0.0/24, gateway: 10.10.0.1, bridge: virbr1, active: true}
disks:
  description: The tenant's volumes (disks, boot disks C(<vm>.boot), seeds C(<vm>.seed)).
  returned: always
  type: dict
  sample:
    data1: {volume: acme_data1.qcow2, pool: default, size_gib: 10, attached_to: web1}
ledger:
  description:
    - The tenant as the ledger holds it - state, plan, quotas, usage on every host, trial and
      blocked VMs (see M(vce.kvm.tenant)). Empty when the tenant is not registered.
  returned: always
  type: dict
images:
  description:
    - The catalogue of base images (see M(vce.kvm.image)) of every zone, by C(<zone>/<name>) - the
      names a VM's boot disk and a disk's backing image may take.
  returned: always
  type: dict
  sample:
    almaty-1/debian-12: {zone: almaty-1, name: debian-12, path: /var/lib/vce-kvm/images/debian-12.qcow2,
      format: qcow2, virtual_size: 2147483648, sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
vms:
  description: The tenant's VMs by declared name, with their addresses.
  returned: always
  type: dict
  sample:
    web1:
      libvirt_name: acme_web1
      state: running
      vcpus: 1
      memory_mib: 1024
      nics: [{mac: "52:54:00:1a:2b:3c", network: lan, ip: 10.10.0.10}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_info
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import ledger_spec


def main() -> None:
    module = AnsibleModule(argument_spec=ledger_spec(), supports_check_mode=True)
    try:
        facts = run_info(module.params)
    except VceError as error:
        module.fail_json(msg=str(error))
    module.exit_json(changed=False, **facts)


if __name__ == "__main__":
    main()
