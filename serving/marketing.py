"""A marketing system's day, as the simulated world needs one: ask the service for the next best
offer of each member of a cohort, send what it answers, and report each send as an impression.

What it does is what a marketing-automation client does over HTTP (``/next_best_offer``, then
``/feedback``), here in process on a :class:`serving.runtime.DecisionRuntime`. Control-group
answers are not sent; degraded answers (the store down) are not sent either, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serving.runtime import DecisionRuntime

FEEDBACK_BATCH = 500


@dataclass
class CohortDay:
    decided: int = 0
    sent: int = 0
    held_out: int = 0
    nothing_to_send: int = 0
    degraded: int = 0
    explored: int = 0
    offers: dict[str, str] = field(default_factory=dict)  # member -> offer sent
    control: list[str] = field(default_factory=list)  # members held out as the control group


def send_cohort(runtime: DecisionRuntime, member_ids: list[str], ts: int, channel: str = "app") -> CohortDay:
    day = CohortDay()
    events = []
    for member in member_ids:
        answer = runtime.next_best_offer(member, channel, ts, max_results=1)
        day.decided += 1
        if answer.degraded:
            day.degraded += 1
        elif answer.control:
            day.held_out += 1
            day.control.append(member)
        elif not answer.offers:
            day.nothing_to_send += 1
        else:
            offer = answer.offers[0].offer_id
            day.sent += 1
            day.explored += int(answer.explored)
            day.offers[member] = offer
            events.append(
                {
                    "event_id": f"imp-{answer.decision_id}",
                    "member_id": member,
                    "event": "impression",
                    "ts": ts,
                    "offer_id": offer,
                    "channel": channel,
                    "decision_id": answer.decision_id,
                }
            )
    for lo in range(0, len(events), FEEDBACK_BATCH):
        runtime.state.add_feedback(events[lo : lo + FEEDBACK_BATCH])
    return day
