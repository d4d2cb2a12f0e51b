"""`rescenter metrics rebuild`: every seller's figures folded again from the event
log, compared with the live ones, and the live ones replaced where they differ;
the seller's months (the read model the live figures find their orders with)
get every entry the log gives them. Run it once after upgrading from a release
without `metrics_sellers`: it fills them from the log.

It runs beside the live service: a seller's document is replaced only if no
event was recorded for it meanwhile (repository.MetricsRepository.rebuild).
`--check` only compares, and exits 1 if any seller differs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from plugins.metrics.repository import MetricsRepository, Rebuilt
from plugins.metrics.rules import seller_figures

if TYPE_CHECKING:
    from core.commands import CommandContext

HELP = "Rebuild every seller's completion rate and success score from the event log and compare with the live ones."


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="compare only, change nothing; exit 1 if a seller's live figures differ")
    parser.add_argument("--seller", action="append", default=[], metavar="SELLER_ID",
                        help="only this seller (repeatable)")


def describe(result: Rebuilt, context: CommandContext) -> str:
    """One line per seller: the figures now, and whether the live ones were the same."""
    policy = context.settings.policy.metrics
    figures = seller_figures(result.seller_id, result.rebuilt, context.clock.now(), policy, source="event_log")
    rate, score = figures.completion_rate.percent, figures.success_score.score
    summary = (f"{len(result.rebuilt)} orders; completion rate "
               f"{'none' if rate is None else f'{rate} %'}; success score {'none' if score is None else score}")
    if result.same:
        return f"{result.seller_id}: same ({summary})"
    repaired = [f"{len(result.repaired)} orders"] if result.repaired else []
    if result.index_repaired:
        repaired.append(f"{result.index_repaired} month entries")
    state = f"rebuilt {' and '.join(repaired)}" if repaired else "DIFFERS"
    details = "\n".join(f"    {line}" for line in result.differences()[:20])
    return f"{result.seller_id}: {state} ({summary})\n{details}"


async def run(context: CommandContext, args: argparse.Namespace) -> int:
    repository = MetricsRepository(context.store)
    sellers = args.seller or await repository.sellers_known()
    same = differed = 0
    for seller_id in sellers:
        result = await repository.rebuild(seller_id, write=not args.check)
        print(describe(result, context), file=context.out)
        same, differed = (same + 1, differed) if result.same else (same, differed + 1)
    verb = "differ (nothing changed: --check)" if args.check else "rebuilt"
    print(f"{len(sellers)} sellers from the event log: {same} same, {differed} {verb}", file=context.out)
    return 1 if args.check and differed else 0
