"""What an answer of the API costs: its usage, priced by model from the table in ``prices.py``.

The rules are Claude Code's own (2.1.332), so that the relay's figure and the CLI's
``total_cost_usd`` agree for the same answers: input, output and cache-read tokens at their
rates; cache writes at the 5-minute rate, except those the usage names as 1-hour writes
(``cache_creation.ephemeral_1h_input_tokens``); the long-prompt rates when input and cache tokens
together exceed the model's threshold; the fast rates when the usage says ``"speed": "fast"``;
everything times 1.1 when it says ``"inference_geo": "us"``; and each web search at its price.

A model the table does not know is priced at the table's dearest rates (a budget must never be
too lenient), and the price says it is unknown, so that the relay can report it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from . import prices
from .errors import UserError

PER_MILLION = 1_000_000


@dataclass(frozen=True)
class Rates:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_write_1h: float
    cache_read: float

    @classmethod
    def from_json(cls, data: object, where: str) -> Rates:
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: not an object of rates")
        values = {}
        for field in fields(cls):
            value = data.get(field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e6:
                raise UserError(f"{where}.{field.name}: not a price in USD per million tokens: {value!r}")
            values[field.name] = float(value)
        return cls(**values)

    def dearest(self, other: Rates) -> Rates:
        """Each rate the higher of the two."""
        return Rates(*(max(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))


@dataclass(frozen=True)
class ModelPrice:
    standard: Rates
    fast: Rates | None = None
    long_prompt: Rates | None = None
    above_prompt_tokens: int | None = None

    @classmethod
    def from_json(cls, data: object, where: str) -> ModelPrice:
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: not an object of rates")
        fast = Rates.from_json(data["fast"], f"{where}.fast") if "fast" in data else None
        long_prompt, above = None, None
        if "long_prompt" in data:
            long_prompt = Rates.from_json(data["long_prompt"], f"{where}.long_prompt")
            above = data["long_prompt"].get("above_prompt_tokens")
            if isinstance(above, bool) or not isinstance(above, int) or above <= 0:
                raise UserError(f"{where}.long_prompt.above_prompt_tokens: not a number of tokens: {above!r}")
        return cls(Rates.from_json(data, where), fast, long_prompt, above)


@dataclass(frozen=True)
class Usage:
    """An answer's usage, as the API reports it (the fields the price depends on)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_tokens: int = 0  # of cache_creation_input_tokens
    web_search_requests: int = 0
    fast: bool = False
    us_inference: bool = False

    @classmethod
    def from_api(cls, usage: object) -> Usage:
        return cls().updated(usage)

    def updated(self, usage: object) -> Usage:
        """With the fields a later report gives (``message_delta``'s are cumulative); the API's
        own numbers, read defensively: what is not a count is left as it was."""
        if not isinstance(usage, Mapping):
            return self
        changes: dict[str, Any] = {}
        for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            if _is_count(usage.get(name)):
                changes[name] = usage[name]
        creation = usage.get("cache_creation")
        if isinstance(creation, Mapping) and _is_count(creation.get("ephemeral_1h_input_tokens")):
            changes["cache_creation_1h_tokens"] = creation["ephemeral_1h_input_tokens"]
        server_tools = usage.get("server_tool_use")
        if isinstance(server_tools, Mapping) and _is_count(server_tools.get("web_search_requests")):
            changes["web_search_requests"] = server_tools["web_search_requests"]
        if isinstance(usage.get("speed"), str):
            changes["fast"] = usage["speed"] == "fast"
        if isinstance(usage.get("inference_geo"), str):
            changes["us_inference"] = usage["inference_geo"] == "us"
        return replace(self, **changes)

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12


@dataclass(frozen=True)
class Price:
    usd: float
    known: bool  # False: the model is not in the table, and was priced at its dearest rates


class PriceTable:
    """Prices by model id or family prefix (see ``prices.py``)."""

    def __init__(self, models: Mapping[str, ModelPrice], web_search: float, us_inference_factor: float):
        if not models:
            raise UserError("the price table has no models")
        self.models = dict(models)
        self.web_search = web_search
        self.us_inference_factor = us_inference_factor
        standard = [price.standard for price in models.values()]
        fast = [price.fast for price in models.values() if price.fast is not None] or standard
        dearest_fast = fast[0]
        for rates in fast[1:]:
            dearest_fast = dearest_fast.dearest(rates)
        dearest = standard[0]
        for rates in standard[1:]:
            dearest = dearest.dearest(rates)
        self.dearest = ModelPrice(dearest, fast=dearest_fast)

    @classmethod
    def load(cls, override: Path | None = None) -> PriceTable:
        """The table of ``prices.py``, with the entries of a JSON file (``{"models": {...}}``) in
        place of its own, key by key."""
        models = {key: ModelPrice.from_json(value, f"prices.{key}") for key, value in prices.MODELS.items()}
        if override is None:
            return cls(models, prices.WEB_SEARCH, prices.US_INFERENCE_FACTOR)
        try:
            data = json.loads(override.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the price table {override}: {exc}") from exc
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
            raise UserError(f'{override}: no object of models ({{"models": {{"claude-...": {{...}}}}}})')
        for key, value in data["models"].items():
            models[str(key)] = ModelPrice.from_json(value, f"{override}: models.{key}")
        return cls(models, prices.WEB_SEARCH, prices.US_INFERENCE_FACTOR)

    def lookup(self, model: str | None) -> tuple[ModelPrice, bool]:
        """The price of a model, and whether the table knows it."""
        name = (model or "").strip().lower()
        best = None
        for key in self.models:
            if (name == key or name.startswith(key + "-")) and (best is None or len(key) > len(best)):
                best = key
        return (self.models[best], True) if best is not None else (self.dearest, False)

    def cost(self, model: str | None, usage: Usage) -> Price:
        price, known = self.lookup(model)
        rates = price.standard
        if price.long_prompt is not None and usage.prompt_tokens > (price.above_prompt_tokens or 0):
            rates = price.long_prompt
        if usage.fast:
            rates = price.fast or self.dearest.fast or rates
        one_hour = min(usage.cache_creation_1h_tokens, usage.cache_creation_input_tokens)
        tokens = (
            usage.input_tokens * rates.input
            + usage.output_tokens * rates.output
            + usage.cache_read_input_tokens * rates.cache_read
            + (usage.cache_creation_input_tokens - one_hour) * rates.cache_write
            + one_hour * rates.cache_write_1h
        ) / PER_MILLION
        factor = self.us_inference_factor if usage.us_inference else 1.0
        return Price(tokens * factor + usage.web_search_requests * self.web_search, known)
