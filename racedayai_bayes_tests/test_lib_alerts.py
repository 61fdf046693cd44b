"""Alert payloads and their delivery to a webhook (lib/alerts.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from racedayai_bayes.lib.outputs.alerts import Alert, post_json, slack_payload

CHECK_ALERT = Alert(
    run_id="run-8f3a",
    distance="140.6",
    check="rhat",
    value=1.0734,
    threshold="<= 1.01",
    severity="ERROR",
    message="max rank-normalised r_hat 1.0734 (sigma_age)",
)
REFIT_ALERT = Alert(
    run_id="run-77", distance=None, check=None, value=None, threshold=None,
    severity="ERROR", message="input file missing",
)


def test_slack_payload_text_names_distance_check_value_threshold_and_run():
    payload = slack_payload([CHECK_ALERT])
    text = payload["text"]
    for fact in ("140.6", "rhat", "1.0734", "<= 1.01", "run-8f3a", "sigma_age"):
        assert fact in text, fact
    assert text.splitlines()[0] == "racedayai-bayes refit: 1 problem(s)"
    assert payload["alerts"] == [
        {"run_id": "run-8f3a", "distance": "140.6", "check": "rhat", "value": 1.0734,
         "threshold": "<= 1.01", "severity": "ERROR", "message": CHECK_ALERT.message, "trigger": None,
         "asset": None, "job": "refit"}
    ]
    # one header block plus one block per alert, each Slack mrkdwn
    assert [b["type"] for b in payload["blocks"]] == ["section", "section"]
    assert payload["blocks"][1]["text"] == {"type": "mrkdwn", "text": CHECK_ALERT.line()}
    json.dumps(payload)  # serialisable as sent


def test_an_alert_names_the_asset_whose_check_failed_and_the_job_of_its_run():
    """Each model has its own checks of the same names: an alert says whose check failed. A
    start list's forecast run is named as such, with its partition, not as a refit."""
    model = Alert("run-1", "70.3", "rhat_max", 1.02, "<= 1.01", "ERROR", "max r_hat 1.02", asset="posterior_seed_asof")
    assert model.line() == ("[ERROR] distance 70.3: check rhat_max on posterior_seed_asof failed: value 1.02 "
                            "(threshold <= 1.01); run run-1. max r_hat 1.02")
    forecast = Alert("run-2", "kestrel-703", None, None, None, "ERROR", "step race_forecasts: no posterior",
                     job="forecast_start_list")
    assert forecast.line() == "[ERROR] partition kestrel-703: forecast_start_list run run-2 failed: step race_forecasts: no posterior"
    assert slack_payload([forecast])["text"].splitlines()[0] == "racedayai-bayes forecast_start_list: 1 problem(s)"


def test_slack_payload_for_a_failed_refit_and_several_alerts():
    payload = slack_payload([CHECK_ALERT, REFIT_ALERT], job="nightly")
    lines = payload["text"].splitlines()
    assert lines[0] == "racedayai-bayes nightly: 2 problem(s)"
    assert lines[2] == "[ERROR] no distance: refit run run-77 failed: input file missing"
    assert len(payload["blocks"]) == 3


class _Receiver(BaseHTTPRequestHandler):
    status = 200
    received: list[tuple[str, dict, bytes]] = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, dict(self.headers), body))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def receiver():
    handler = type("Handler", (_Receiver,), {"received": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_post_json_delivers_exactly_the_payload(receiver):
    server, handler = receiver
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks/abc"
    payload = slack_payload([CHECK_ALERT])
    assert post_json(url, payload, timeout=5) == 200
    assert len(handler.received) == 1
    path, headers, body = handler.received[0]
    assert path == "/hooks/abc"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == payload
    assert body == json.dumps(payload).encode("utf-8")


def test_post_json_raises_os_error_on_http_failure(receiver):
    server, handler = receiver
    handler.status = 500
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    with pytest.raises(OSError):
        post_json(url, {"text": "x"}, timeout=5)
    assert len(handler.received) == 1


def test_alert_line_names_a_scheduled_trigger():
    alert = Alert("run-1", "70.3", None, None, None, "ERROR", "step posterior failed", "schedule weekly_refit")
    assert alert.line() == "[ERROR] distance 70.3: refit run run-1 (schedule weekly_refit) failed: step posterior failed"
