# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""spec -> observe -> plan -> apply: the facade every front end calls, the gate, drift, and one
file per resource kind.
"""
