"""Resolution center: partial refunds, cancellation requests, update requests, extensions, extra offers.

Rules DSP-1 to DSP-10 of RULES.md. Registered with the core; its hook
implementations land with its own issue, so for now it declares nothing and
consumes nothing.
"""

from __future__ import annotations

NAME = "disputes"
