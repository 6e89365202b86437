# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who is calling: what a token or a session stands for, and nothing else.

A customer's principal carries its tenant; every lookup the server makes is scoped to it, so
a customer never names its own tenant and cannot name another's.
"""

from __future__ import annotations

from dataclasses import dataclass

CUSTOMER = "customer"
OPERATOR = "operator"
ROLES = (CUSTOMER, OPERATOR)
READ = "read"
WRITE = "write"
SCOPES = (READ, WRITE)


@dataclass(frozen=True)
class Principal:
    token: str  # the token's visible prefix, or "session:<login>"
    actor: str  # who, for records: the user's login or "token:<name>"
    role: str  # CUSTOMER | OPERATOR
    tenant: str | None  # None for operators
    scopes: frozenset[str]

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR

    def may(self, scope: str) -> bool:
        return scope in self.scopes
