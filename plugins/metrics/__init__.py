"""Private order completion rate and success score.

Rules MET-1 to MET-4 of RULES.md. Registered with the core; its hook
implementations land with its own issue, so for now it declares nothing and
consumes nothing.
"""

from __future__ import annotations

NAME = "metrics"
