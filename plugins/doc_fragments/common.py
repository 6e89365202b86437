# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI of the KVM host.
      - Use V(qemu:///system) when the module runs on the host itself, or
        V(qemu+ssh://root@host/system) to manage a host from the controller.
      - Set it once for all vce.kvm modules with C(module_defaults) and the action group
        C(group/vce.kvm.vce).
    type: str
    default: qemu:///system
  tenant:
    description:
      - The tenant that owns the objects. Every libvirt object gets the name
        C(<tenant>_<name>) and ownership metadata naming the tenant.
      - The module refuses to modify or delete objects of another tenant, or objects that
        were not created by vce.kvm.
      - 1-32 lowercase letters, digits and C(-).
    type: str
    required: true
requirements:
  - libvirt-python on the machine that runs the module
  - a libvirt daemon (libvirt 9.0 or later) on the KVM host
notes:
  - Invalid input fails before anything is changed; the error names the field and the reason.
"""

    # A zone as the operator configures it (vce_zones[vce_zone]): the modules that need its
    # uplink or public pools. Each module's own zone_config says what it uses it for.
    ZONE = r"""
options:
  zone_config:
    description:
      - The zone as the operator configures it, usually C(vce_zones[vce_zone]) from the inventory.
    type: dict
    suboptions:
      uplink:
        description: The hosts' interface (or bridge) towards the zone's public network.
        type: str
        required: true
      public_pools:
        description: The zone's public IP pools, used in order (see M(vce.kvm.public_ip)).
        type: list
        elements: dict
        required: true
        suboptions:
          name:
            description: The pool's name.
            type: str
            required: true
          cidr:
            description: The pool's addresses.
            type: str
            required: true
          gateway:
            description: The upstream gateway (never allocated).
            type: str
            required: true
          exclude:
            description: Addresses of the pool never to allocate.
            type: list
            elements: str
            default: []
"""

    # The modules that check quotas or write to the ledger.
    LEDGER = r"""
options:
  ledger_url:
    description:
      - The ledger that holds tenants, plans, quotas and reservations, as a database URL.
      - Default - the environment variable E(VCE_LEDGER_URL), else the SQLite file
        C(~/.local/share/vce-kvm/ledger.sqlite3) of the user that runs the module (C($XDG_DATA_HOME)
        is honoured).
      - V(postgresql+psycopg://user@host/db) for operators with many hosts or controllers; keep the
        password out of the URL (use C(~/.pgpass) or E(PGPASSWORD)).
      - A missing SQLite file is created (mode 0600, new directories 0700) only by the modules
        that register, M(vce.kvm.tenant), M(vce.kvm.host), M(vce.kvm.image) and
        M(vce.kvm.environment) with O(vce.kvm.environment#module:register), with a warning; the
        others refuse it, naming the path, so a mistyped URL is not an empty ledger.
      - The schema is created and migrated automatically on first use.
    type: str
requirements:
  - SQLAlchemy 2 and Alembic on the machine that runs the module (psycopg 3 for PostgreSQL)
notes:
  - Every run that changes a tenant's objects is admitted by the ledger first - the tenant must
    be registered (M(vce.kvm.tenant)); its quotas are checked in check mode as well as before
    apply, where the run's additional usage is reserved under the ledger's lock.
  - The run's actor and id in the ledger come from E(VCE_ACTOR) (default - the user name) and
    E(VCE_RUN_ID) (default - a new id per module call).
"""

    # The modules that make a disk from a base image (vce.kvm.vm, vce.kvm.disk).
    IMAGES = r"""
options:
  zone:
    description:
      - The host's zone, whose catalogue (see M(vce.kvm.image)) the base images are named from.
        Without it, every zone whose catalogue has an image name must have the same file under it.
    type: str
  image_dirs:
    description:
      - The host's image directories, where an operator's absolute image path must lie (after
        symbolic links are resolved). An empty list accepts no path.
    type: list
    elements: path
    default: [/var/lib/vce-kvm/images]
"""

    # Where backup schedules, their configs and their backups live on the KVM host.
    BACKUP_HOST = r"""
options:
  backup_root:
    description:
      - The directory on the KVM host that every backup target must be in (the operator's
        allowed backup root); a target outside it is refused.
    type: path
    default: /var/lib/vce-kvm/backups
  unit_dir:
    description: Where the schedules' systemd units are installed on the host.
    type: path
    default: /etc/systemd/system
  config_dir:
    description: Where the schedules' runner configs (JSON) are written on the host.
    type: path
    default: /etc/vce-kvm/backup
  runner:
    description:
      - The backup runner's path on the host (the C(vce-backup) console script of this
        collection's Python distribution, installed by the C(kvm_host) role). The units'
        C(ExecStart) runs it, and C(systemd-analyze verify) refuses units whose runner is missing.
    type: path
    default: /usr/local/bin/vce-backup
requirements:
  - python3 and systemd-analyze on the KVM host
"""

    # Only for the modules that change things and return RV(plan): info has no such value.
    ATTRIBUTES = r"""
notes:
  - Check mode and diff mode show the same plan that a real run applies. Each change in
    RV(plan) has a class - C(live) (applied without interrupting the VM), C(restart) (takes
    full effect when the VM restarts) or C(replace) (the object is made again).
attributes:
  check_mode:
    description: Can run in check mode and return the planned changes without making them.
    support: full
  diff_mode:
    description: Returns the before and after values of every planned change in diff mode.
    support: full
  idempotent:
    description: A second run with the same arguments reports C(changed=false).
    support: full
  action_group:
    description: Use C(group/vce.kvm.vce) in C(module_defaults) to set O(uri) once.
    support: full
    membership:
      - vce.kvm.vce
"""

    # The modules that change only the ledger and host-side state, not one libvirt object kind.
    LEDGER_ATTRIBUTES = r"""
attributes:
  check_mode:
    description: Can run in check mode and return the planned changes without making them.
    support: full
  diff_mode:
    description: Returns the before and after values of every planned change in diff mode.
    support: full
  idempotent:
    description: A second run with the same arguments reports C(changed=false).
    support: full
  action_group:
    description: Use C(group/vce.kvm.vce) in C(module_defaults) to set O(ledger_url) once.
    support: full
    membership:
      - vce.kvm.vce
"""

    INFO_ATTRIBUTES = r"""
attributes:
  check_mode:
    description: Read-only; runs the same in check mode.
    support: full
  diff_mode:
    description: Changes nothing, so has no diff.
    support: N/A
  idempotent:
    description: Reads only.
    support: full
  action_group:
    description: Use C(group/vce.kvm.vce) in C(module_defaults) to set O(uri) once.
    support: full
    membership:
      - vce.kvm.vce
"""
