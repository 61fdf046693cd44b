"""Alert messages for failed checks and failed refits, and their delivery to a webhook.

The payload is Slack-compatible (a ``text`` field, with one block per failure); the same
facts are repeated as structured ``alerts`` for other receivers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

ALERT_INTERVAL_ENV = "RACEDAYAI_ALERT_INTERVAL_S"
DEFAULT_ALERT_INTERVAL_S = 10


def alert_interval_s(environ=None) -> int:
    """The alert sensors' minimum interval in seconds: RACEDAYAI_ALERT_INTERVAL_S, a whole
    number from 1 to 3600 (default 10); anything else is a ValueError naming the variable."""
    import os

    text = (os.environ if environ is None else environ).get(ALERT_INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_ALERT_INTERVAL_S
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 3600):
        raise ValueError(f"{ALERT_INTERVAL_ENV}={text!r}: the alert sensors' interval must be a whole number of "
                         f"seconds from 1 to 3600 (unset: {DEFAULT_ALERT_INTERVAL_S})")
    return int(text)


@dataclass(frozen=True)
class Alert:
    run_id: str
    distance: str | None
    check: str | None
    value: float | None
    threshold: str | None
    severity: str
    message: str
    trigger: str | None = None  # e.g. "schedule weekly_refit"; None for a manual launch
    asset: str | None = None  # the checked asset (e.g. posterior_seed_asof): which model failed it
    job: str = "refit"  # what the run did: "refit", or e.g. "forecast_start_list"

    def line(self) -> str:
        # a refit's partition is a distance; another job's (a start list's) is named as such
        kind = "distance" if self.job == "refit" else "partition"
        where = f"{kind} {self.distance}" if self.distance else f"no {kind}"
        run = f"run {self.run_id}" + (f" ({self.trigger})" if self.trigger else "")
        if self.check:
            value = f"{self.value:.6g}" if isinstance(self.value, float) else self.value
            on = f" on {self.asset}" if self.asset else ""
            return (
                f"[{self.severity}] {where}: check {self.check}{on} failed: value {value} "
                f"(threshold {self.threshold}); {run}. {self.message}"
            )
        return f"[{self.severity}] {where}: {self.job} {run} failed: {self.message}"


def slack_payload(alerts: list[Alert], job: str | None = None) -> dict:
    """The webhook's JSON: ``job`` (default: the alerts' own) names what the runs did."""
    job = job or (alerts[0].job if alerts else "refit")
    header = f"racedayai-bayes {job}: {len(alerts)} problem(s)"
    return {
        "text": header + "\n" + "\n".join(a.line() for a in alerts),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{header}*"}},
            *({"type": "section", "text": {"type": "mrkdwn", "text": a.line()}} for a in alerts),
        ],
        "alerts": [asdict(a) for a in alerts],
    }


def post_json(url: str, payload: dict, timeout: float = 10.0) -> int:
    """POST ``payload`` as JSON; returns the HTTP status. Raises OSError on failure."""
    import urllib.request  # here: `racedayai-bayes refit` reads alert_interval_s at its start, without it

    body = json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (URL set by the operator)
        return int(resp.status)
