"""Availability mode: away periods, order caps, paused gigs.

Rules AVL-1 to AVL-5 of RULES.md. Registered with the core; its hook
implementations land with its own issue, so for now it declares nothing and
consumes nothing.
"""

from __future__ import annotations

NAME = "availability"
