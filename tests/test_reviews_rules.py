"""The pure decisions of the reviews plugin (plugins/reviews/rules.py): the edges that
are cheaper to pin here than through the running service. The rules themselves are
proven end to end in tests/test_reviews.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.settings import ReviewPolicy
from plugins.reviews.rules import (
    BuyerFacts,
    Change,
    DueDate,
    Message,
    OrderFacts,
    SellerSilence,
    evaluate,
    human,
    state_at,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
S = timedelta(seconds=1)
POLICY = ReviewPolicy()
REGULAR = BuyerFacts("b", completed_orders=(("older", T0 - 30 * 24 * H),))


def cancelled_order(**changes: object) -> OrderFacts:
    facts: dict[str, object] = {"order_id": "o", "buyer_id": "b", "seller_id": "s", "state": "cancelled",
                                "cancelled_at": T0 + 72 * H, "cancel_cause": "support"}
    facts.update(changes)
    return OrderFacts(**facts)  # type: ignore[arg-type]


def verdicts(order: OrderFacts, buyer: BuyerFacts = REGULAR, now: datetime | None = None) -> dict[str, bool]:
    answer = evaluate(order, buyer, POLICY, now or T0 + 80 * H)
    return {c.name: c.holds for v in answer.rules for c in v.conditions}


def say(key: str, sender: str, at: datetime) -> Message:
    return Message(key, sender, "s" if sender == "b" else "b", at)


@pytest.mark.parametrize(("seconds", "words"), [(0, "0 s"), (59, "59 s"), (3600, "1 h"), (86401, "24 h 1 s"),
                                                (111600, "31 h"), (90061, "25 h 1 min 1 s"),
                                                (172799, "47 h 59 min 59 s"), (432000, "5 d"),
                                                (403205, "4 d 16 h 5 s")])
def test_human_durations_to_the_second(seconds: int, words: str) -> None:
    assert human(timedelta(seconds=seconds)) == words


def test_REV_1_lateness_uses_the_due_date_in_force_an_extension_before_the_end_moves_it() -> None:
    due = DueDate(T0, T0 + 24 * H, "order.requirements_submitted")
    assert verdicts(cancelled_order(due_dates=(due,)))["late"] is True  # 48 h late at the cancellation
    extended = DueDate(T0 + 20 * H, T0 + 60 * H, "order.delivery_extended")
    assert verdicts(cancelled_order(due_dates=(extended, due)))["late"] is False  # 12 h past the new date
    too_late = DueDate(T0 + 80 * H, T0 + 100 * H, "order.delivery_extended")  # after the cancellation
    assert verdicts(cancelled_order(due_dates=(due, too_late)))["late"] is True


def test_REV_1_lateness_stops_at_the_first_delivery() -> None:
    due = DueDate(T0, T0 + 24 * H, "order.requirements_submitted")
    order = cancelled_order(due_dates=(due,), deliveries=(T0 + 60 * H, T0 + 48 * H + S))
    answer = evaluate(order, REGULAR, POLICY, T0 + 80 * H)
    late = answer.verdict("REV-1").conditions[0]
    assert late.holds is True and late.facts["late_by_seconds"] == 24 * 3600 + 1
    assert late.detail.startswith("late by 24 h 1 s past the due date at the first delivery")


def test_REV_1_a_delivery_after_the_cancellation_is_not_a_delivery_received() -> None:
    assert verdicts(cancelled_order(deliveries=(T0 + 73 * H,)))["delivery_received"] is False
    assert verdicts(cancelled_order(deliveries=(T0 + 72 * H,)))["delivery_received"] is True


def test_REV_1_messages_after_the_cancellation_or_between_others_do_not_count() -> None:
    after = cancelled_order(messages=(say("m1", "b", T0 + 73 * H),))
    assert verdicts(after, now=T0 + 110 * H)["unanswered"] is False
    strangers = cancelled_order(messages=(Message("m1", "b", "someone-else", T0),))
    assert verdicts(strangers)["unanswered"] is False


def test_REV_1_a_wait_starts_at_the_first_unanswered_message_and_ends_at_the_sellers_answer() -> None:
    messages = (say("m1", "b", T0), say("m2", "b", T0 + 20 * H), say("m3", "s", T0 + 24 * H + S))
    assert verdicts(cancelled_order(messages=messages))["unanswered"] is True  # waited from T0, not from m2
    reported_twice = (say("m1", "b", T0), say("m1", "b", T0), say("m2", "s", T0 + 24 * H))
    answer = evaluate(cancelled_order(messages=reported_twice), REGULAR, POLICY, T0 + 80 * H)
    unanswered = answer.verdict("REV-1").conditions[1]
    assert unanswered.holds is False and unanswered.facts["buyer_messages"] == 1


def test_REV_1_a_seller_silence_after_the_cancellation_does_not_count() -> None:
    assert verdicts(cancelled_order(seller_silences=(SellerSilence("r1", T0 + 71 * H),)))["unanswered"] is True
    assert verdicts(cancelled_order(seller_silences=(SellerSilence("r1", T0 + 73 * H),)))["unanswered"] is False


def test_REV_2_counts_orders_completed_by_the_review_attempt_and_never_this_one() -> None:
    buyer = BuyerFacts("b", completed_orders=(("o", T0), ("later", T0 + 90 * H)))
    assert verdicts(cancelled_order(), buyer, now=T0 + 80 * H)["completed_orders"] is False
    assert verdicts(cancelled_order(), buyer, now=T0 + 90 * H)["completed_orders"] is True


def test_REV_3_the_switch_in_effect_is_the_last_that_happened_not_the_last_to_arrive() -> None:
    changes = (Change(T0 + 2 * H, False), Change(T0 + H, True))
    assert state_at(changes, T0 + 3 * H) == Change(T0 + 2 * H, False)
    assert state_at(changes, T0 + H + S) == Change(T0 + H, True)
    assert state_at(changes, T0) is None
    buyer = BuyerFacts("b", completed_orders=REGULAR.completed_orders, seller_account=changes)
    assert verdicts(cancelled_order(), buyer)["active_seller_account"] is False


def test_REV_4_the_window_is_open_one_second_before_its_end_and_closed_at_it() -> None:
    order = cancelled_order(deliveries=(T0,))
    closes = T0 + 72 * H + timedelta(days=5)
    assert evaluate(order, REGULAR, POLICY, closes - S).eligible is True
    closed = evaluate(order, REGULAR, POLICY, closes)
    assert [r.rule for r in closed.refusals] == ["REV-4"] and closed.window_closes_at == closes


def test_refusals_come_most_final_first_and_a_running_order_is_not_reviewable() -> None:
    order = cancelled_order(cancel_cause="chargeback")
    answer = evaluate(order, BuyerFacts("b"), POLICY, T0 + 72 * H + timedelta(days=6), review_id="rev-o")
    assert [r.rule for r in answer.refusals] == ["REV-9", "REV-4", "REV-1", "REV-2", "REV-3"]
    running = evaluate(OrderFacts("o", "b", "s", state="in_progress", deliveries=(T0,)), REGULAR, POLICY, T0 + H)
    assert [r.rule for r in running.refusals] == ["REV-1"] and running.window_closes_at is None
    assert "in_progress, not cancelled" in running.refusals[0].reason
