# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is on one KVM host: the libvirt connection, XML, ownership, host commands, facts, cloud-
init seeds.
"""
