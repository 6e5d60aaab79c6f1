"""The price table: what the relay charges an account for the API's answers.

USD per million tokens (``web_search``: USD per search). The figures are Claude Code 2.1.332's own
(the CLI the images pin): its model catalog names a pricing tier per model (``tier_5_25``: $5 in,
$25 out) and fast-mode rates for some, and its ``total_cost_usd`` is computed from them, with the
same rules as ``pricing.py``. For the models on Anthropic's pricing page when this was written
(https://www.anthropic.com/pricing#api: Claude Opus 4, 4.1 and 4.5, Sonnet 4 and 4.5, Haiku 3.5
and 4.5) the figures are the page's. To change them without a release, give the relay a JSON file
of the same shape (``{"models": {...}}``; its entries replace these, key by key).

A key is a model id or a family prefix. A model is priced by the longest key that is its name, or
the beginning of its name followed by ``-``: ``claude-opus-4-5-20251101`` by ``claude-opus-4-5``, a
new ``claude-opus-4-9`` by ``claude-opus-4``, which holds the family's dearest rates. A model that no
key matches is priced at the dearest rates of the table (see ``pricing.py``).

``cache_write`` is a 5-minute cache write, ``cache_write_1h`` a 1-hour one; ``fast``: the rates when
the answer's usage says ``"speed": "fast"``; ``long_prompt``: the rates once the input and cache
tokens of one answer together exceed ``above_prompt_tokens``.
"""

from __future__ import annotations

from typing import Any


def _rates(input: float, output: float, cache_write: float, cache_write_1h: float, cache_read: float) -> dict[str, Any]:
    return {"input": input, "output": output, "cache_write": cache_write, "cache_write_1h": cache_write_1h,
            "cache_read": cache_read}  # fmt: skip


# The CLI's tiers: input, output, cache write (5 minutes), cache write (1 hour), cache read.
HAIKU_35 = _rates(0.8, 4, 1, 1.6, 0.08)
HAIKU_45 = _rates(1, 5, 1.25, 2, 0.1)
HAIKU_55 = _rates(0.1, 0.5, 0.125, 0.2, 0.01)
HAIKU_55_LONG_PROMPT = _rates(0.5, 2.5, 0.625, 1, 0.05)
TIER_2_10 = _rates(2, 10, 2.5, 4, 0.2)
TIER_2_10_CACHE_READ_0_10 = _rates(2, 10, 2.5, 4, 0.1)
TIER_3_15 = _rates(3, 15, 3.75, 6, 0.3)
TIER_4_20_CACHE_READ_0_20 = _rates(4, 20, 5, 8, 0.2)
TIER_5_25 = _rates(5, 25, 6.25, 10, 0.5)
TIER_8_40_CACHE_READ_0_20 = _rates(8, 40, 10, 16, 0.2)
TIER_10_50 = _rates(10, 50, 12.5, 20, 1)
TIER_10_50_CACHE_READ_0_25 = _rates(10, 50, 12.5, 20, 0.25)
TIER_15_75 = _rates(15, 75, 18.75, 30, 1.5)
# Its fast-mode rates (Opus 4.8 and 5 are at TIER_10_50 in fast mode).
FAST_8_40 = _rates(8, 40, 10, 16, 0.4)
FAST_16_80 = _rates(16, 80, 20, 32, 0.4)
FAST_30_150 = _rates(30, 150, 37.5, 60, 3)

WEB_SEARCH = 0.01  # per search
US_INFERENCE_FACTOR = 1.1  # the usage says "inference_geo": "us"

MODELS: dict[str, dict[str, Any]] = {
    "claude-3-5-haiku": HAIKU_35,
    "claude-haiku-4": HAIKU_45,
    "claude-haiku-4-5": HAIKU_45,
    "claude-haiku-5": {
        **HAIKU_55,
        "long_prompt": {"above_prompt_tokens": 100000, **HAIKU_55_LONG_PROMPT},
    },
    "claude-haiku-5-5": {
        **HAIKU_55,
        "long_prompt": {"above_prompt_tokens": 100000, **HAIKU_55_LONG_PROMPT},
    },
    "claude-3-5-sonnet": TIER_3_15,
    "claude-3-7-sonnet": TIER_3_15,
    "claude-sonnet-4": TIER_3_15,
    "claude-sonnet-4-0": TIER_3_15,
    "claude-sonnet-4-5": TIER_3_15,
    "claude-sonnet-4-6": TIER_3_15,
    "claude-sonnet-5": TIER_2_10,
    "claude-sonnet-5-5": TIER_2_10_CACHE_READ_0_10,
    "claude-opus-4": {**TIER_15_75, "fast": FAST_30_150},
    "claude-opus-4-0": TIER_15_75,
    "claude-opus-4-1": TIER_15_75,
    "claude-opus-4-5": TIER_5_25,
    "claude-opus-4-6": {**TIER_5_25, "fast": FAST_30_150},
    "claude-opus-4-7": {**TIER_5_25, "fast": FAST_30_150},
    "claude-opus-4-8": {**TIER_5_25, "fast": TIER_10_50},
    "claude-opus-5": {**TIER_5_25, "fast": TIER_10_50},
    "claude-opus-5-5": {**TIER_4_20_CACHE_READ_0_20, "fast": FAST_8_40},
    "claude-fable-5": {**TIER_10_50, "fast": FAST_16_80},
    "claude-fable-5-1": TIER_10_50_CACHE_READ_0_25,
    "claude-fable-5-2": {**TIER_8_40_CACHE_READ_0_20, "fast": FAST_16_80},
    "claude-mythos-5": {**TIER_10_50, "fast": FAST_16_80},
    "claude-mythos-5-1": TIER_10_50_CACHE_READ_0_25,
    "claude-mythos-5-2": {**TIER_8_40_CACHE_READ_0_20, "fast": FAST_16_80},
}
