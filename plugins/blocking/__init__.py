"""Sellers blocking buyers.

Rules BLK-1 to BLK-3 of RULES.md. Registered with the core; its hook
implementations land with its own issue, so for now it declares nothing and
consumes nothing.
"""

from __future__ import annotations

NAME = "blocking"
