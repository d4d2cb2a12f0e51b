"""HTTP routes of the blocking plugin (BLK-1 to BLK-3).

The block list is private: only the seller and support (staff) read or change
it (BLK-3); anybody else is refused, including the buyer it names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from core.http.responses import View
from core.http.routes import SELLER_OR_SUPPORT, Call, Route
from plugins.blocking.commands import BlockingCommands

TAGS = ("blocking",)
WHAT = "a seller's blocked buyers"  # BLK-3: nobody else sees the list


class BlockedBuyer(View):
    buyer_id: str
    blocked_at: datetime


class BlockList(View):
    """A seller's blocked buyers, oldest block first (BLK-3: the seller and support only)."""

    seller_id: str
    blocked_buyers: list[BlockedBuyer]


def view(seller_id: str, blocked: list[dict[str, Any]]) -> dict[str, Any]:
    return {"seller_id": seller_id,
            "blocked_buyers": [{"buyer_id": e["buyer_id"], "blocked_at": e["blocked_at"]} for e in blocked]}


async def list_blocked(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    call.acting_for_seller(seller_id, WHAT)
    return view(seller_id, await BlockingCommands(call.services).blocked_buyers(seller_id))


async def block_buyer(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    blocked = await BlockingCommands(call.services).block(
        seller_id, call.match["buyer_id"], call.acting_for_seller(seller_id, WHAT))
    return view(seller_id, blocked)


async def unblock_buyer(call: Call) -> dict[str, Any]:
    seller_id = call.match["seller_id"]
    blocked = await BlockingCommands(call.services).unblock(
        seller_id, call.match["buyer_id"], call.acting_for_seller(seller_id, WHAT))
    return view(seller_id, blocked)


def routes() -> list[Route]:
    path = "/blocking/sellers/{seller_id}/blocked-buyers"
    return [
        Route("GET", path, list_blocked, "The buyers the seller blocked (the seller and support only).",
              roles=SELLER_OR_SUPPORT, response=BlockList, rules=("BLK-3",), tags=TAGS),
        Route("PUT", f"{path}/{{buyer_id}}", block_buyer,
              "Block a buyer: their new orders with this seller are refused. Refused while the buyer has an "
              "active order with the seller (the problem lists those orders).",
              roles=SELLER_OR_SUPPORT, response=BlockList, rules=("BLK-1", "BLK-2"), tags=TAGS,
              responses={"409": {"description": "BLK-2: the buyer has active orders with the seller "
                                                "(`order_ids`)."}}),
        Route("DELETE", f"{path}/{{buyer_id}}", unblock_buyer, "Unblock a buyer: their orders are taken again.",
              roles=SELLER_OR_SUPPORT, response=BlockList, rules=("BLK-3",), tags=TAGS),
    ]
