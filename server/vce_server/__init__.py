# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control plane: `vce serve`, the API and the personal cabinet through which customers
manage their environment. Only this process holds the hosts' URIs and the ledger's credentials."""
