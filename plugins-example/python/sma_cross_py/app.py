"""Moving-average cross, written in Python: the same strategy as the Rust `sma-cross` example.

Long when the fast average crosses above the slow one; out (or short, in `long-short` mode) when
it crosses below. Parameters, declared once in `PARAMS` (Keel shows them and refuses a config
that does not fit them before `init`): `fast` (default 10), `slow` (default 30), `mode`
(`long-only` | `long-short`, default `long-only`), `size_fraction` (default 0.1).

Built into a component of the `keel:strategy@0.1.1` world `strategy-with-params` by
componentize-py (see scripts/build-plugins):

    componentize-py -d wit -w strategy-with-params componentize \
        -p plugins-example/python/sma_cross_py app -o sma_cross_py.wasm

State lives in module globals: componentize-py makes a fresh `WitWorld` object for each export
call, so anything set on `self` in `init` is gone by `on_candle`.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import account, log
from wit_world.imports.types import (
    AccountView,
    Candle,
    EntryRequest,
    ExitRequest,
    Fill,
    Intent,
    Intent_Entry,
    Intent_Exit,
    ParamSpec,
    ParamValue_Float,
    ParamValue_Int,
    ParamValue_Text,
    PositionSide,
    Price_Market,
    Size_FreeCapitalFraction,
)

EXIT_TAG = "sma-cross-py exit"
LONG_TAG = "sma-cross-py long"
SHORT_TAG = "sma-cross-py short"
WINDOW_MAX = 10_000
SYMBOLS_MAX = 256

# The settings `init` accepted, and one `Cross` per symbol handle.
CONFIG = None
CROSSES = {}


# The parameters, declared once: the `params` export returns them, and `Settings` reads each
# (Keel has already refused unknown keys, values of the wrong type and values out of range, and
# filled in the defaults).
PARAMS = [
    ParamSpec("fast", ParamValue_Int(10), 1.0, float(WINDOW_MAX), [],
              "Length of the fast moving average, in candles."),
    ParamSpec("slow", ParamValue_Int(30), 2.0, float(WINDOW_MAX), [],
              "Length of the slow moving average, in candles; above fast."),
    ParamSpec("mode", ParamValue_Text("long-only"), None, None, ["long-only", "long-short"],
              "Long only, or long and short."),
    ParamSpec("size_fraction", ParamValue_Float(0.1), 0.001, 1.0, [],
              "Fraction of free capital committed per entry."),
]


class Settings:
    def __init__(self, pairs):
        values = dict(pairs)  # the last occurrence of a key wins
        self.fast = parse(values, "fast", int)
        self.slow = parse(values, "slow", int)
        self.mode = parse(values, "mode", str)
        self.size_fraction = parse(values, "size_fraction", float)
        # Fast below slow is the one rule the declared ranges cannot say.
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be less than slow ({self.slow})")


def parse(values, key, kind):
    """The value of a declared parameter: the text given, or its declared default."""
    text = values.get(key)
    if text is None:
        spec = next(p for p in PARAMS if p.name == key)
        return kind(spec.default.value)
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError(f"parameter `{key}`: cannot parse {text!r}") from None


class Sma:
    """A simple moving average over a fixed window, O(1) per value."""

    def __init__(self, length):
        self.window = [0.0] * length
        self.next = 0
        self.filled = 0
        self.sum = 0.0

    def push(self, value):
        length = len(self.window)
        self.sum += value - self.window[self.next]
        self.window[self.next] = value
        self.next = (self.next + 1) % length
        self.filled = min(self.filled + 1, length)
        return self.sum / length if self.filled == length else None


class Cross:
    """Reports +1 when the fast average crosses above the slow one, -1 when below."""

    def __init__(self, settings):
        self.fast = Sma(settings.fast)
        self.slow = Sma(settings.slow)
        self.fast_above = None

    def on_close(self, close):
        fast = self.fast.push(close)
        slow = self.slow.push(close)
        if fast is None or slow is None:
            return 0
        above = fast > slow
        previous, self.fast_above = self.fast_above, above
        if previous is None or previous == above:
            return 0
        return 1 if above else -1


def exit_market(symbol):
    return Intent_Exit(ExitRequest(symbol, 1.0, Price_Market(), EXIT_TAG))


def enter_market(symbol, side, fraction, tag):
    size = Size_FreeCapitalFraction(fraction)
    return Intent_Entry(EntryRequest(symbol, side, size, Price_Market(), None, None, tag))


class WitWorld(wit_world.WitWorld):
    def params(self) -> list[ParamSpec]:
        return PARAMS

    def init(self, config):
        global CONFIG
        try:
            CONFIG = Settings(config)
        except ValueError as error:
            raise Err(str(error))
        CROSSES.clear()
        log.log(log.Level.INFO, f"sma-cross-py: fast {CONFIG.fast}, slow {CONFIG.slow}, {CONFIG.mode}")

    def on_candle(self, candle: Candle, account_view: AccountView) -> list[Intent]:
        if candle.symbol >= SYMBOLS_MAX:
            return []
        cross = CROSSES.get(candle.symbol)
        if cross is None:
            cross = CROSSES[candle.symbol] = Cross(CONFIG)
        turn = cross.on_close(candle.close)
        if turn == 0:
            return []
        position = account.position_of(candle.symbol)
        held = None if position is None else position.side
        long_short = CONFIG.mode == "long-short"
        intents = []
        if turn > 0:
            if held == PositionSide.SHORT:
                intents.append(exit_market(candle.symbol))
            if held != PositionSide.LONG:
                intents.append(enter_market(candle.symbol, PositionSide.LONG, CONFIG.size_fraction, LONG_TAG))
        else:
            if held == PositionSide.LONG:
                intents.append(exit_market(candle.symbol))
            if long_short and held != PositionSide.SHORT:
                intents.append(enter_market(candle.symbol, PositionSide.SHORT, CONFIG.size_fraction, SHORT_TAG))
        return intents

    def on_fill(self, fill: Fill, account_view: AccountView) -> list[Intent]:
        return []

    def on_timer(self, now_ms: int, account_view: AccountView) -> list[Intent]:
        return []
