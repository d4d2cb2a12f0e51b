"""Reviews on cancelled orders: eligibility, 5-day window, seller replies.

Rules REV-1 to REV-9 of RULES.md. Registered with the core; its hook
implementations land with its own issue, so for now it declares nothing and
consumes nothing.
"""

from __future__ import annotations

NAME = "reviews"
