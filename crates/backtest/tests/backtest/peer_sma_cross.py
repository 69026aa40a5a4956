"""The peer of the golden backtests: backtesting.py's SmaCross on its own GOOG data.

Usage: peer_sma_cross.py OUT_DIR

Writes OUT_DIR/goog.csv (the daily candles, as pandas writes them) and OUT_DIR/trades.json: for each case, the closed trades
backtesting.py makes (side, entry and exit bar, entry and exit price).
"""

import json
import sys
from pathlib import Path

from backtesting import Backtest, Strategy
from backtesting.lib import crossover
from backtesting.test import GOOG, SMA

# Cash large enough that a tenth of it buys whole shares all through the period.
CASH = 1_000_000

CASES = {
    "long_only_tenth": {"mode": "long-only", "size": 0.1},
    "long_short_tenth": {"mode": "long-short", "size": 0.1},
    # backtesting.py reads a size of 1 as one share: the whole equity is a fraction just below.
    "long_only_whole": {"mode": "long-only", "size": 0.9999},
}


class SmaCross(Strategy):
    fast = 10
    slow = 20
    mode = "long-only"
    size = 0.1

    def init(self):
        self.sma_fast = self.I(SMA, self.data.Close, self.fast)
        self.sma_slow = self.I(SMA, self.data.Close, self.slow)

    def next(self):
        if crossover(self.sma_fast, self.sma_slow):
            self.position.close()
            self.buy(size=self.size)
        elif crossover(self.sma_slow, self.sma_fast):
            self.position.close()
            if self.mode == "long-short":
                self.sell(size=self.size)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    # As pandas writes it: the dates in an unnamed first column, then Open,High,Low,Close,Volume.
    GOOG.to_csv(out / "goog.csv")
    cases = {}
    for name, params in CASES.items():
        stats = Backtest(GOOG, SmaCross, cash=CASH, commission=0.0).run(**params)
        cases[name] = [
            {
                "side": "long" if t.Size > 0 else "short",
                "entry_bar": int(t.EntryBar),
                "exit_bar": int(t.ExitBar),
                "entry_price": float(t.EntryPrice),
                "exit_price": float(t.ExitPrice),
            }
            for t in stats._trades.itertuples()
        ]
    (out / "trades.json").write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
