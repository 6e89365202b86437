# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Actions: what every change answers with, read back and waited for."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from ..errors import not_found
from ..principal import Principal
from .deps import Context, context, reader

router = APIRouter(tags=["actions"])
MAX_WAIT = 60


def scope_of(who: Principal) -> str | None:
    """The tenant whose actions the caller sees; None: an operator sees every tenant's."""
    return None if who.is_operator else who.tenant


@router.get("/v1/actions")
def list_actions(
    status: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The caller's tenant's actions, newest first."""
    return {"actions": ctx.actions.list(scope_of(who), limit=limit, status=status)}


@router.get("/v1/actions/{action_id}")
def read_action(
    action_id: str,
    wait: float = Query(0, ge=0, le=MAX_WAIT, description="Seconds to wait for the action to end."),
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """One action; with `wait`, answered when it ends or the time is up (long poll)."""
    tenant = scope_of(who)
    view = ctx.actions.wait(action_id, tenant, wait) if wait else ctx.actions.get(action_id, tenant)
    if view is None:
        raise not_found(f"action {action_id}")
    return {"action": view}
