# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vce Pulumi provider: tenant environments through the control plane's API."""

# The package's version: the schema's, the plugin's and the client's User-Agent.
VERSION = "0.1.0"
