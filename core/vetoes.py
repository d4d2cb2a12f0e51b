"""A plugin's refusal of a new order (ORD-5)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Veto:
    #: words a buyer understands, e.g. "The seller is away until 3 March: on holiday"
    reason: str
    #: the plugin's own rule, e.g. "AVL-1"
    rule: str
    #: extra facts for the problem document (return date, cap, ...)
    details: dict[str, Any] = field(default_factory=dict)
    #: the refused buyer is told the reason only: the problem names neither the
    #: plugin nor its rule nor the details (a blocked buyer must not learn of the block)
    discreet: bool = False
    #: filled in by the core
    plugin: str = ""
