# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run from source, as the Pulumi CLI's Python language host starts a plugin directory:
`python -u pulumi/provider <engine address>`. The checkout's engine comes first, so an older
installed copy never answers for it. Installed, the same server is `pulumi-resource-vce`."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT_COLLECTIONS = HERE.parent.parent / "collections"
if (CHECKOUT_COLLECTIONS / "ansible_collections").is_dir():
    sys.path.insert(0, str(CHECKOUT_COLLECTIONS))
sys.path.insert(0, str(HERE))

from pulumi_resource_vce.main import main  # noqa: E402

main()
