# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ledger's Alembic migrations, one file per revision under versions/.

Each revision is named here as well as being a file: Ansible packs into a module's payload only
the module_utils that are imported, and the ledger needs every revision wherever it runs.
"""

from __future__ import annotations

from .versions import (
    v0001_initial,
    v0002_public_ips,
    v0003_zone_links,
    v0004_backups,
    v0005_billing,
    v0006_hosts,
    v0007_images,
    v0008_usage_intents,
    v0009_control_plane,
    v0010_sessions,
)

REVISION_MODULES = (
    v0001_initial,
    v0002_public_ips,
    v0003_zone_links,
    v0004_backups,
    v0005_billing,
    v0006_hosts,
    v0007_images,
    v0008_usage_intents,
    v0009_control_plane,
    v0010_sessions,
)
HEAD = REVISION_MODULES[-1].revision
