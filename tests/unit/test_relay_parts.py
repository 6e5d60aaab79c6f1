"""The relay's parts on their own: the price table, the meter that reads usage from answers,
the gate to the API, the checks of request targets and bodies, the ledger of accounts."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from orchestrator import prices
from orchestrator.accounts import Ledger
from orchestrator.errors import UserError
from orchestrator.metering import JSON_WHOLE, MAX_EVENT_LINE, AnswerMeter
from orchestrator.pricing import PriceTable, Usage
from orchestrator.ratelimit import RateGate, retry_after_seconds
from orchestrator.relay_input import (
    API_BODY_LIMIT,
    ROUTES,
    BodyRefused,
    Refused,
    declared_length,
    route,
    spool_body,
)

# ---- prices ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def by_hand(rates: dict, usage: Usage) -> float:
    """The cost as the table's documentation says, computed the long way."""
    one_hour = usage.cache_creation_1h_tokens
    return (
        usage.input_tokens * rates["input"]
        + usage.output_tokens * rates["output"]
        + usage.cache_read_input_tokens * rates["cache_read"]
        + (usage.cache_creation_input_tokens - one_hour) * rates["cache_write"]
        + one_hour * rates["cache_write_1h"]
    ) / 1_000_000


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-opus-4-9", "claude-opus-4"),  # a new one of the family: the family's dearest rates
        ("CLAUDE-SONNET-4-6", "claude-sonnet-4-6"),
    ],
)
def test_a_model_is_priced_by_its_id_or_its_family(table: PriceTable, model: str, key: str) -> None:
    usage = Usage(
        input_tokens=12_345, output_tokens=678, cache_creation_input_tokens=9_000, cache_read_input_tokens=50_000
    )
    price = table.cost(model, usage)
    assert price.known
    assert price.usd == pytest.approx(by_hand(prices.MODELS[key], usage))


def test_the_figures_of_the_pricing_page(table: PriceTable) -> None:
    """Per million tokens, as Anthropic's pricing page and Claude Code 2.1.332 say."""
    million = Usage(input_tokens=1_000_000)
    assert table.cost("claude-opus-4-1", million).usd == pytest.approx(15)
    assert table.cost("claude-opus-4-5", million).usd == pytest.approx(5)
    assert table.cost("claude-sonnet-4-5", million).usd == pytest.approx(3)
    assert table.cost("claude-haiku-4-5", million).usd == pytest.approx(1)
    assert table.cost("claude-sonnet-4-5", Usage(output_tokens=1_000_000)).usd == pytest.approx(15)
    assert table.cost("claude-sonnet-4-5", Usage(cache_creation_input_tokens=1_000_000)).usd == pytest.approx(3.75)
    assert table.cost("claude-sonnet-4-5", Usage(cache_read_input_tokens=1_000_000)).usd == pytest.approx(0.3)


@pytest.mark.parametrize("model", ["gpt-4o", "claude-nova-1", "", None, "claude-opus"])
def test_an_unknown_model_is_priced_at_the_dearest_rates(table: PriceTable, model: str | None) -> None:
    usage = Usage(input_tokens=1000, output_tokens=1000, cache_creation_input_tokens=1000, cache_read_input_tokens=1000)
    price = table.cost(model, usage)
    assert not price.known
    assert all(price.usd >= table.cost(key, usage).usd for key in prices.MODELS)
    assert price.usd == pytest.approx(table.cost("claude-opus-4-1", usage).usd)  # the dearest tier, 15/75


def test_one_hour_cache_writes_long_prompts_fast_mode_us_inference_and_web_search(table: PriceTable) -> None:
    one_hour = {"ephemeral_1h_input_tokens": 1000}
    usage = Usage().updated({"input_tokens": 100, "cache_creation_input_tokens": 3000, "cache_creation": one_hour})
    rates = prices.MODELS["claude-sonnet-4-5"]
    assert table.cost("claude-sonnet-4-5", usage).usd == pytest.approx(
        (100 * rates["input"] + 2000 * rates["cache_write"] + 1000 * rates["cache_write_1h"]) / 1e6
    )
    long_rates = prices.MODELS["claude-haiku-5-5"]["long_prompt"]
    over = Usage(input_tokens=long_rates["above_prompt_tokens"] + 1)
    assert table.cost("claude-haiku-5-5", over).usd == pytest.approx(over.input_tokens * long_rates["input"] / 1e6)
    fast = Usage().updated({"output_tokens": 1_000_000, "speed": "fast"})
    assert table.cost("claude-opus-4-6", fast).usd == pytest.approx(prices.FAST_30_150["output"])
    # Fast mode of a model with no fast rates: the dearest fast rates known.
    assert table.cost("claude-sonnet-4-5", fast).usd == pytest.approx(prices.FAST_30_150["output"])
    searches = {"web_search_requests": 3}
    us = Usage().updated({"input_tokens": 1_000_000, "inference_geo": "us", "server_tool_use": searches})
    assert table.cost("claude-sonnet-4-5", us).usd == pytest.approx(3 * 1.1 + 3 * 0.01)


def test_usage_read_defensively() -> None:
    usage = Usage().updated({"input_tokens": "many", "output_tokens": -1, "cache_read_input_tokens": True})
    assert usage == Usage()
    assert Usage().updated(None) == Usage()
    later = Usage(input_tokens=10, output_tokens=1).updated({"output_tokens": 500})
    assert (later.input_tokens, later.output_tokens) == (10, 500)  # message_delta: cumulative output only


def test_a_price_file_replaces_entries_and_names_a_bad_one(tmp_path: Path) -> None:
    override = tmp_path / "prices.json"
    rates = {"input": 1, "output": 2, "cache_write": 3, "cache_write_1h": 4, "cache_read": 5}
    override.write_text(json.dumps({"models": {"claude-sonnet-4-5": rates, "our-gateway-model": rates}}))
    table = PriceTable.load(override)
    assert table.cost("claude-sonnet-4-5", Usage(output_tokens=1_000_000)).usd == pytest.approx(2)
    assert table.cost("our-gateway-model", Usage(input_tokens=1_000_000)).known
    assert table.cost("claude-opus-4-5", Usage(input_tokens=1_000_000)).usd == pytest.approx(5)  # untouched
    override.write_text(json.dumps({"models": {"m": {**rates, "output": -2}}}))
    with pytest.raises(UserError, match=r"models\.m\.output"):
        PriceTable.load(override)


# ---- the meter -------------------------------------------------------------------------------------


def sse(*events: dict) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


STREAM = sse(
    {"type": "message_start", "message": {"model": "claude-sonnet-4-5", "usage": {
        "input_tokens": 7, "cache_creation_input_tokens": 11, "cache_read_input_tokens": 13, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "message_start " * 50}},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 40}},
    {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 90}},
    {"type": "message_stop"},
)  # fmt: skip


@pytest.mark.parametrize("piece", [1, 7, 64, 100_000])
def test_the_meter_reads_a_stream_cut_anywhere(piece: int) -> None:
    seen: list[tuple[str | None, Usage]] = []
    meter = AnswerMeter("text/event-stream; charset=utf-8", lambda model, usage: seen.append((model, usage)))
    for at in range(0, len(STREAM), piece):
        meter.feed(STREAM[at : at + piece])
    meter.close()
    assert [(m, u.output_tokens) for m, u in seen] == [("claude-sonnet-4-5", 1), ("claude-sonnet-4-5", 40),
                                                       ("claude-sonnet-4-5", 90)]  # fmt: skip
    assert (seen[-1][1].input_tokens, seen[-1][1].cache_creation_input_tokens, seen[-1][1].cache_read_input_tokens) == (
        7,
        11,
        13,
    )


def test_the_meter_skips_a_line_too_long_to_hold() -> None:
    seen: list[Usage] = []
    meter = AnswerMeter("text/event-stream", lambda model, usage: seen.append(usage))
    meter.feed(b"data: " + b"x" * (MAX_EVENT_LINE + 10))
    meter.feed(b"x" * MAX_EVENT_LINE + b'{"type": "message_delta", "usage": {"output_tokens": 1}}\n\n')
    assert len(meter._line) == 0 and seen == []  # the long line was dropped, not held
    meter.feed(sse({"type": "message_delta", "usage": {"output_tokens": 5}}))
    assert [u.output_tokens for u in seen] == [5]


@pytest.mark.parametrize("size", [100, JSON_WHOLE * 3])
def test_the_meter_reads_a_json_answer_small_or_large(size: int) -> None:
    answer = json.dumps({
        "id": "msg_1", "model": "claude-opus-4-5", "content": [{"type": "text", "text": "y" * size}],
        "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5},
    }).encode()  # fmt: skip
    seen: list[tuple[str | None, Usage]] = []
    meter = AnswerMeter("application/json", lambda model, usage: seen.append((model, usage)))
    for at in range(0, len(answer), 65536):
        meter.feed(answer[at : at + 65536])
    meter.close()
    assert seen == [("claude-opus-4-5", Usage(input_tokens=3, output_tokens=4, cache_read_input_tokens=5))]
    assert len(meter._tail) <= 64 << 10 and len(meter._head) <= JSON_WHOLE


# ---- the gate ---------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_gate_comes_down_to_what_the_api_took_and_raises_its_bound_slowly() -> None:
    clock = Clock()
    gate = RateGate(8, raise_after=3, clock=clock, jitter=lambda: 0.0)
    for _ in range(8):
        assert gate.enter(deadline=clock.now)
    assert not gate.enter(deadline=clock.now)  # the ninth waits (and its deadline has come)
    # The API takes 4 at once: the 4 others of the burst are refused, one after the other.
    opens = gate.back_off(429, 6.0)
    assert (opens, gate.bound, gate.view().backing_off) == (clock.now + 6.0, 7, True)
    for _ in range(3):
        gate.leave(succeeded=False)
        gate.back_off(429, 6.0)  # the same pause seen by another request
    gate.leave(succeeded=False)
    assert (gate.bound, gate.view().in_flight) == (4, 4)
    assert "retry-after 6 s" in gate.view().reason
    for _ in range(4):
        gate.leave(succeeded=False)
    assert not gate.enter(deadline=clock.now)  # closed until the pause ends, though there is room
    clock.now += 6.0
    assert gate.enter(deadline=clock.now) and not gate.view().backing_off
    gate.leave(succeeded=True)
    for _ in range(3 * 4 - 1):
        assert gate.enter(deadline=clock.now)
        gate.leave(succeeded=True)
    assert gate.bound == 8  # +1 per 3 successes, not more than it was given


def test_a_request_refused_alone_halves_the_bound_once_per_pause() -> None:
    clock = Clock()
    gate = RateGate(8, clock=clock, jitter=lambda: 0.0)
    assert gate.enter(deadline=clock.now)
    gate.back_off(429, 6.0)
    gate.back_off(429, 6.0)  # an echo of the same pause
    assert gate.bound == 4


def test_after_a_probe_past_the_apis_capacity_the_bound_goes_back_to_it() -> None:
    clock = Clock()
    gate = RateGate(8, raise_after=1, clock=clock, jitter=lambda: 0.0)
    gate.bound = 4
    for _ in range(4):
        assert gate.enter(deadline=clock.now)
    gate.leave(succeeded=True)  # a success raises it to 5: five in flight, the fifth refused
    assert gate.bound == 5 and gate.enter(deadline=clock.now) and gate.enter(deadline=clock.now)
    gate.back_off(429, 1.0)
    assert gate.bound == 4  # not halved to 2: the API was answering 4


def test_without_retry_after_the_pauses_grow() -> None:
    clock = Clock()
    gate = RateGate(4, clock=clock, jitter=lambda: 0.0)
    pauses = []
    for _ in range(4):
        pauses.append(gate.back_off(529, None) - clock.now)
        clock.now += pauses[-1]
    assert pauses == [1.0, 2.0, 4.0, 8.0] and gate.bound == 1


def test_the_jitter_adds_at_most_a_quarter() -> None:
    clock = Clock()
    assert RateGate(2, clock=clock, jitter=lambda: 1.0).back_off(429, 8.0) == clock.now + 10.0


def test_a_waiting_request_goes_when_a_place_frees() -> None:
    gate = RateGate(1)
    assert gate.enter(deadline=float("inf"))
    entered = threading.Event()

    def wait() -> None:
        if gate.enter(deadline=float("inf")):
            entered.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    gate.leave(succeeded=True)
    waiter.join(timeout=30)
    assert entered.is_set() and gate.view().in_flight == 1


@pytest.mark.parametrize(("header", "seconds"), [("6", 6.0), (" 0.5 ", 0.5), ("-1", None), ("soon", None),
                                                  (None, None), ("nan", None), ("1e9", 86400.0)])  # fmt: skip
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


# ---- targets and bodies ------------------------------------------------------------------------------


def test_the_routes_are_what_claude_code_sends() -> None:
    for known in ROUTES:
        assert route(known.method, known.target) == known


@pytest.mark.parametrize(
    "target",
    ["/v1/../v1/messages?beta=true", "/v1/./messages?beta=true", "/v1/%2e%2e/v1/messages?beta=true",
     "/v1/%2E%2E/v1/messages?beta=true", "/v1/%2e/messages?beta=true", "/v1/%252e%252e/v1/messages?beta=true",
     "/v1%2fmessages?beta=true", "/v1%2Fmessages?beta=true", "/v1%252fmessages?beta=true",
     "/v1\\messages?beta=true", "/v1%5cmessages?beta=true", "/v1/messages%00?beta=true",
     "/v1/messages\x00?beta=true", "/v1/messages%0d%0aX:1?beta=true", "/v1/mess%61ges?beta=true",
     "/v1/messages?beta=%74rue", "/v1/messages?beta=true#x", "/v1/%ff?beta=true", "/v1/messages?beta=true&x=1",
     "/v1/messages", "/v1/messages/?beta=true", "v1/messages?beta=true", "http://evil.test/v1/messages?beta=true",
     "//evil.test/v1/messages?beta=true", "/v1/messages;x?beta=true", "/v1/mes sages?beta=true"],
)  # fmt: skip
def test_anything_but_a_plain_path_of_claude_code_is_refused(target: str) -> None:
    with pytest.raises(Refused):
        route("POST", target)


def test_a_content_length_over_the_limit_is_refused_before_reading() -> None:
    headers = _headers({"Content-Length": str(API_BODY_LIMIT + 1)})
    with pytest.raises(BodyRefused) as refused:
        declared_length(headers, API_BODY_LIMIT)
    assert (refused.value.status, refused.value.error_type) == (413, "request_too_large")


@pytest.mark.parametrize(
    "headers",
    [{"Content-Length": "5", "Transfer-Encoding": "chunked"}, {"Content-Length": "-1"}, {"Content-Length": "1e3"},
     {"Transfer-Encoding": "gzip, chunked"}, {"Content-Length": "٣"}],
)  # fmt: skip
def test_ambiguous_bodies_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(BodyRefused) as refused:
        declared_length(_headers(headers), API_BODY_LIMIT)
    assert refused.value.status == 400


def test_a_chunked_body_is_read_to_a_spool_and_refused_past_the_limit() -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [b"a" * 10, b"b" * 300]) + b"0\r\nX-Trailer: 1\r\n\r\n"
    spool = spool_body(io.BytesIO(body), None, limit=1000, in_memory=100)
    assert spool.read() == b"a" * 10 + b"b" * 300
    assert spool._rolled  # type: ignore[attr-defined]  # past in_memory: on disk
    with pytest.raises(BodyRefused) as refused:
        spool_body(io.BytesIO(body), None, limit=200)
    assert refused.value.status == 413
    with pytest.raises(BodyRefused):
        spool_body(io.BytesIO(b"zz\r\n"), None, limit=200)


def _headers(values: dict[str, str]):
    import email.message

    message = email.message.Message()
    for name, value in values.items():
        message[name] = value
    return message


# ---- the ledger ----------------------------------------------------------------------------------------


def test_a_budget_is_spent_once_and_tells_every_parent() -> None:
    ledger = Ledger(account_in_flight=2)
    ledger.issue_ticket("task-1", budget_usd=1.0, parent="batch")
    ledger.issue_ticket("task-2", parent="batch")
    ledger.set_budget("batch", 1.5)
    assert ledger.charge("task-1", 0.9) == [] and ledger.spent("task-1") is None
    assert ledger.charge("task-1", 0.2) == [("task-1", "the budget of task-1 is spent: $1.10 of $1.00")]
    assert ledger.charge("task-1", 0.2) == []  # told once
    assert ledger.spent("task-2") is None
    assert [account for account, _ in ledger.charge("task-2", 0.2)] == ["batch"]
    assert ledger.spent("task-2") == ("batch", "the budget of batch is spent: $1.50 of $1.50")
    assert ledger.account("task-2").state == "spent" and ledger.account("batch").cost_usd == pytest.approx(1.5)


def test_tickets_are_kept_as_digests_and_revoked() -> None:
    ledger = Ledger(account_in_flight=1)
    ticket = ledger.issue_ticket("task-1")
    assert ledger.account_for(ticket) == "task-1"
    assert ticket not in repr(ledger.__dict__)
    ledger.revoke(ticket)
    assert ledger.account_for(ticket) is None


@pytest.mark.parametrize("budget", [-1, float("nan"), float("inf"), True, "1"])
def test_a_budget_is_a_number_of_usd(budget: object) -> None:
    with pytest.raises(ValueError, match="budget"):
        Ledger(1).issue_ticket("t", budget_usd=budget)  # type: ignore[arg-type]


def test_an_account_keeps_its_parent() -> None:
    ledger = Ledger(1)
    ledger.issue_ticket("t", parent="batch-1")
    with pytest.raises(ValueError, match="already belongs"):
        ledger.issue_ticket("t", parent="batch-2")
    with pytest.raises(ValueError, match="own parent"):
        ledger.issue_ticket("u", parent="u")
