"""Events the blocking plugin publishes (BLK-1, BLK-3).

They are about a seller, not an order: the envelope's `subject` is
`seller:<seller_id>`. A block is private to the seller (and support): these
events are for the marketplace's own services, and no consumer may tell the
buyer about them.
"""

from __future__ import annotations

from pydantic import Field

from core.messages import Actor, MessageData, MessageType


def subject(seller_id: str) -> str:
    return f"seller:{seller_id}"


class BlockChanged(MessageData):
    seller_id: str
    buyer_id: str
    actor: Actor = Field(description="The seller, or support acting for them.")
    rule: str


class BuyerBlocked(BlockChanged):
    pass


class BuyerUnblocked(BlockChanged):
    pass


MESSAGE_TYPES: tuple[MessageType, ...] = (
    MessageType("blocking.buyer_blocked", BuyerBlocked,
                "A seller blocked a buyer: that buyer's new orders with the seller are refused. Private: never "
                "shown to the buyer.", "publish", rules=("BLK-1", "BLK-2")),
    MessageType("blocking.buyer_unblocked", BuyerUnblocked,
                "A seller unblocked a buyer: their orders are taken again. Private: never shown to the buyer.",
                "publish", rules=("BLK-3",)),
)
