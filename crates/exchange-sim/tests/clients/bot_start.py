"""What a bot does at start, through ccxt's binanceusdm and binance-futures-connector's
UMFutures, against `keel exchange-sim`. Usage: bot_start.py BASE_URL API_KEY API_SECRET.
Exits non-zero on the first error or insane value."""

import sys
import time

import ccxt
from binance.um_futures import UMFutures

base, key, secret = sys.argv[1], sys.argv[2], sys.argv[3]


def check(condition, what):
    if not condition:
        raise SystemExit(f"FAILED: {what}")


def ccxt_client():
    exchange = ccxt.binanceusdm({"apiKey": key, "secret": secret, "timeout": 15000})
    # Point every USDⓈ-M API family at the simulator; the currency list is a spot call.
    for name in list(exchange.urls["api"]):
        if name.startswith("fapi"):
            version = exchange.urls["api"][name].rsplit("/", 1)[-1]
            exchange.urls["api"][name] = f"{base}/fapi/{version}"
    exchange.options["fetchCurrencies"] = False
    return exchange


def run_ccxt():
    ex = ccxt_client()
    markets = ex.load_markets()
    check("BTC/USDT:USDT" in markets, "ccxt lists BTC/USDT:USDT")
    balance = ex.fetch_balance()
    check(balance["USDT"]["total"] > 0, f"a USDT balance: {balance['USDT']}")
    ex.set_leverage(5, "BTC/USDT:USDT")
    ticker = ex.fetch_ticker("BTC/USDT:USDT")
    check(ticker["last"] and ticker["last"] > 0, f"a last price: {ticker}")
    book = ex.fetch_order_book("BTC/USDT:USDT", 5)
    check(book["bids"][0][0] < book["asks"][0][0], "bid below ask")
    # OHLCV with paging: two pages of hourly candles, the second after the first.
    since = ex.milliseconds() - 30 * 3600 * 1000
    first = ex.fetch_ohlcv("BTC/USDT:USDT", "1h", since=since, limit=10)
    check(len(first) == 10, f"10 hourly candles, got {len(first)}")
    second = ex.fetch_ohlcv("BTC/USDT:USDT", "1h", since=first[-1][0] + 1, limit=10)
    check(len(second) == 10 and second[0][0] == first[-1][0] + 3600 * 1000, "paging advances")
    check(all(c[5] > 0 for c in first + second), "non-zero volume")
    for timeframe in ["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h",
                      "1d", "3d", "1w", "1M"]:
        rows = ex.fetch_ohlcv("BTC/USDT:USDT", timeframe, limit=3)
        check(len(rows) >= 1 and all(r[2] >= r[3] > 0 for r in rows), f"{timeframe} candles")
    positions = ex.fetch_positions(["BTC/USDT:USDT"])
    check(isinstance(positions, list), "positions")
    funding = ex.fetch_funding_rate_history("BTC/USDT:USDT", limit=5)
    check(len(funding) == 5 and all(f["fundingRate"] == 0.0001 for f in funding), f"funding {funding}")
    check(all(b["timestamp"] - a["timestamp"] == 8 * 3600 * 1000 for a, b in zip(funding, funding[1:])),
          "funding every eight hours")
    check(ex.fetch_position_mode("BTC/USDT:USDT")["hedged"] is False, "one-way mode")
    price = ticker["last"]
    resting = ex.create_order("BTC/USDT:USDT", "limit", "buy", 0.01, round(price * 0.5, 1))
    check(resting["status"] == "open", f"a resting limit order: {resting['status']}")
    fetched = ex.fetch_order(resting["id"], "BTC/USDT:USDT")
    check(fetched["id"] == resting["id"], "fetch the order")
    check(len(ex.fetch_open_orders("BTC/USDT:USDT")) == 1, "one open order")
    ex.cancel_order(resting["id"], "BTC/USDT:USDT")
    for fraction in (0.5, 0.6):
        ex.create_order("BTC/USDT:USDT", "limit", "buy", 0.01, round(price * fraction, 1))
    check(len(ex.fetch_open_orders("BTC/USDT:USDT")) == 2, "two open orders")
    ex.cancel_all_orders("BTC/USDT:USDT")
    check(ex.fetch_open_orders("BTC/USDT:USDT") == [], "cancel all leaves none open")
    # Post-only: resting below the market it is kept; at a price that would take, refused (-5022).
    maker = ex.create_order("BTC/USDT:USDT", "limit", "buy", 0.01, round(price * 0.7, 1),
                            params={"postOnly": True})
    check(maker["status"] == "open" and maker["postOnly"], f"a post-only order rests: {maker}")
    try:
        ex.create_order("BTC/USDT:USDT", "limit", "buy", 0.01, round(price * 1.05, 1),
                        params={"postOnly": True})
        raise SystemExit("FAILED: a post-only order that would take was accepted")
    except ccxt.InvalidOrder as error:
        check("-5022" in str(error), f"refused with -5022: {error}")
    ex.cancel_all_orders("BTC/USDT:USDT")
    # Immediate-or-cancel: far below the market, the next candle cannot fill it and it expires.
    ioc = ex.create_order("BTC/USDT:USDT", "limit", "buy", 0.01, round(price * 0.5, 1),
                          params={"timeInForce": "IOC"})
    check(ioc["timeInForce"] == "IOC", f"an IOC order: {ioc}")
    deadline = time.time() + 15
    while ex.fetch_order(ioc["id"], "BTC/USDT:USDT")["status"] == "open" and time.time() < deadline:
        time.sleep(0.1)
    check(ex.fetch_order(ioc["id"], "BTC/USDT:USDT")["status"] == "expired", "an unfilled IOC expires")
    # Fill-or-kill: out of the next candle's reach, it expires with nothing filled.
    fok = ex.create_order("BTC/USDT:USDT", "limit", "buy", 0.01, round(price * 0.5, 1),
                          params={"timeInForce": "FOK"})
    check(fok["timeInForce"] == "FOK", f"a FOK order: {fok}")
    deadline = time.time() + 15
    while ex.fetch_order(fok["id"], "BTC/USDT:USDT")["status"] == "open" and time.time() < deadline:
        time.sleep(0.1)
    killed = ex.fetch_order(fok["id"], "BTC/USDT:USDT")
    check(killed["status"] == "expired" and killed["filled"] == 0, f"an unfilled FOK expires: {killed}")
    batch = ex.create_orders([
        {"symbol": "BTC/USDT:USDT", "type": "limit", "side": "buy", "amount": 0.01,
         "price": round(price * fraction, 1)}
        for fraction in (0.5, 0.6)
    ])
    check(len(batch) == 2 and all(o["status"] == "open" for o in batch), f"a batch of two: {batch}")
    ex.cancel_all_orders("BTC/USDT:USDT")
    filled = ex.create_order("BTC/USDT:USDT", "market", "buy", 0.01)
    check(filled["status"] == "closed" and filled["filled"] == 0.01, f"a filled market order {filled}")
    trades = ex.fetch_my_trades("BTC/USDT:USDT")
    check(len(trades) >= 1 and trades[-1]["order"] == filled["id"], "my trades")
    orders = ex.fetch_orders("BTC/USDT:USDT")
    check(len(orders) >= 2, "all orders")
    positions = ex.fetch_positions(["BTC/USDT:USDT"])
    check(any(p["contracts"] == 0.01 for p in positions), f"a position: {positions}")
    ex.create_order("BTC/USDT:USDT", "market", "sell", 0.01, params={"reduceOnly": True})
    # The fills reach the income history: fees, and the PnL of the closing fill.
    deadline = time.time() + 15
    while True:
        ledger = ex.fetch_ledger("USDT")
        kinds = {entry["type"] for entry in ledger}
        if {"commission", "trade"} <= kinds or time.time() > deadline:
            break
        time.sleep(0.2)
    check({"commission", "trade"} <= kinds, f"fees and realized PnL in the ledger: {kinds}")


def run_ccxt_algo_orders():
    """Conditional orders through ccxt, which sends them to Binance's Algo Order API:
    a stop-market and a take-profit-market closing the position, placed, fetched, listed and
    cancelled."""
    ex = ccxt_client()
    ex.load_markets()
    symbol = "BTC/USDT:USDT"
    far = round(ex.fetch_ticker(symbol)["last"] * 2, 1)
    stop = ex.create_order(symbol, "market", "buy", 0.01, None, {"triggerPrice": far})
    check(stop["status"] == "open" and stop["info"]["orderType"] == "STOP_MARKET"
          and stop["triggerPrice"] == far and stop["info"]["algoType"] == "CONDITIONAL",
          f"an algo stop-market: {stop}")
    fetched = ex.fetch_order(stop["id"], symbol, {"trigger": True})
    check(fetched["id"] == stop["id"] and fetched["status"] == "open"
          and fetched["clientOrderId"] == stop["clientOrderId"], f"fetched: {fetched}")
    # The position the take-profit closes.
    ex.create_order(symbol, "market", "buy", 0.01)
    take = ex.create_order(symbol, "market", "sell", None, None,
                           {"takeProfitPrice": far, "closePosition": True})
    check(take["info"]["orderType"] == "TAKE_PROFIT_MARKET" and take["info"]["closePosition"] is True
          and take["takeProfitPrice"] == far, f"an algo take-profit closing the position: {take}")
    open_ids = {o["id"] for o in ex.fetch_open_orders(symbol, params={"trigger": True})}
    check(open_ids == {stop["id"], take["id"]}, f"both wait as algo orders: {open_ids}")
    check(ex.fetch_open_orders(symbol) == [], "no algo order among the plain open orders")
    for order in (stop, take):
        cancelled = ex.cancel_order(order["id"], symbol, {"trigger": True})
        check(cancelled["id"] == order["id"], f"cancelled: {cancelled}")
        after = ex.fetch_order(order["id"], symbol, {"trigger": True})
        check(after["status"] == "canceled", f"cancelled for good: {after}")
    check(ex.fetch_open_orders(symbol, params={"trigger": True}) == [], "none left waiting")
    ex.create_order(symbol, "market", "sell", 0.01, params={"reduceOnly": True})


def wait_for_status(client, order_id, leaving, wait_s=15):
    deadline = time.time() + wait_s
    while True:
        order = client.query_order(symbol="ETHUSDT", orderId=order_id)
        if order["status"] != leaving or time.time() > deadline:
            return order
        time.sleep(0.1)


def place_stop(client, stop_of, **params):
    """Places a conditional order at the stop price `stop_of(last price)` gives, again with a
    fresh price when the market moved past it in between (-2021)."""
    for _ in range(20):
        last = float(client.ticker_price("ETHUSDT")["price"])
        try:
            return client.new_order(symbol="ETHUSDT", stopPrice=round(stop_of(last), 2), **params)
        except Exception as error:  # the connector's ClientError carries Binance's code
            if getattr(error, "error_code", None) != -2021:
                raise
    raise SystemExit("FAILED: the market kept moving past the stop price")


def run_conditional_orders(client):
    """A stop-loss that closes the position, through the connector; ccxt reads it too."""
    client.new_order(symbol="ETHUSDT", side="BUY", type="MARKET", quantity=0.02)
    deadline = time.time() + 15
    while float(client.get_position_risk(symbol="ETHUSDT")[0]["positionAmt"]) != 0.02:
        check(time.time() < deadline, "the entry fills")
        time.sleep(0.1)
    # Far above the market a take-profit waits; ccxt lists it with its trigger price.
    far = float(client.ticker_price("ETHUSDT")["price"]) * 2
    waiting = client.new_order(symbol="ETHUSDT", side="SELL", type="TAKE_PROFIT_MARKET",
                               stopPrice=round(far, 2), closePosition="true")
    check(waiting["type"] == "TAKE_PROFIT_MARKET" and waiting["closePosition"], f"{waiting}")
    listed = [o for o in ccxt_client().fetch_open_orders("ETH/USDT:USDT")
              if o["id"] == str(waiting["orderId"])]
    check(len(listed) == 1 and listed[0]["triggerPrice"] == round(far, 2)
          and listed[0]["info"]["origType"] == "TAKE_PROFIT_MARKET", f"ccxt lists it: {listed}")
    cancelled = client.cancel_order(symbol="ETHUSDT", orderId=waiting["orderId"])
    check(cancelled["status"] == "CANCELED", f"a conditional order cancels: {cancelled}")
    # A tick under the market, the first candle whose low dips below it triggers the stop, which
    # closes the position (a random walk that keeps rising delays it: a minute of candles).
    stop = place_stop(client, lambda last: last - 0.01, side="SELL", type="STOP_MARKET",
                      closePosition="true", workingType="CONTRACT_PRICE")
    check(stop["status"] == "NEW" and stop["origQty"] == "0", f"a waiting stop-loss: {stop}")
    filled = wait_for_status(client, stop["orderId"], "NEW", wait_s=60)
    check(filled["status"] == "FILLED" and float(filled["executedQty"]) == 0.02,
          f"the stop-loss closed the position: {filled}")
    position = float(client.get_position_risk(symbol="ETHUSDT")[0]["positionAmt"])
    check(position == 0, f"flat after the stop-loss: {position}")
    try:
        client.new_order(symbol="ETHUSDT", side="SELL", type="STOP_MARKET", quantity=0.01,
                         stopPrice=round(far, 2), closePosition="true")
        raise SystemExit("FAILED: closePosition with a quantity accepted")
    except SystemExit:
        raise
    except Exception as error:
        check(getattr(error, "error_code", None) == -4137, f"refused with -4137: {error}")


def run_connector():
    client = UMFutures(key=key, secret=secret, base_url=base)
    check(client.time()["serverTime"] > 0, "server time")
    client.exchange_info()
    check(float(client.ticker_price("ETHUSDT")["price"]) > 0, "a price")
    client.ticker_24hr_price_change("ETHUSDT")
    client.book_ticker("ETHUSDT")
    client.mark_price("ETHUSDT")
    client.depth("ETHUSDT", limit=5)
    rows = client.klines("ETHUSDT", "15m", limit=5)
    check(len(rows) == 5, "five klines")
    perpetual = client.continuous_klines("ETHUSDT", "PERPETUAL", "15m", limit=5)
    check([r[0] for r in perpetual] == [r[0] for r in rows], "the perpetual's klines are the symbol's")
    check(len(client.funding_rate("ETHUSDT", limit=3)) == 3, "three funding rows")
    check(client.get_position_mode() == {"dualSidePosition": False}, "one-way mode")
    try:
        client.change_position_mode(dualSidePosition="true")
        raise SystemExit("FAILED: hedge mode accepted")
    except SystemExit:
        raise
    except Exception as error:  # the connector's ClientError carries Binance's code
        check(getattr(error, "error_code", None) == -1130, f"hedge mode refused with -1130: {error}")
    client.account()
    check(float(client.balance()[0]["balance"]) > 0, "a balance")
    client.get_position_risk(symbol="ETHUSDT")
    client.leverage_brackets(symbol="ETHUSDT")
    client.change_leverage(symbol="ETHUSDT", leverage=3)
    order = client.new_order(symbol="ETHUSDT", side="BUY", type="LIMIT", quantity=0.01,
                             price=2500, timeInForce="GTC")
    client.query_order(symbol="ETHUSDT", orderId=order["orderId"])
    client.get_open_orders(symbol="ETHUSDT", orderId=order["orderId"])
    client.get_orders(symbol="ETHUSDT")
    client.cancel_order(symbol="ETHUSDT", orderId=order["orderId"])
    client.new_order(symbol="ETHUSDT", side="BUY", type="LIMIT", quantity=0.01, price=2400,
                     timeInForce="GTC")
    # At a price the next candle reaches, an IOC order fills there.
    last = float(client.ticker_price("ETHUSDT")["price"])
    ioc = client.new_order(symbol="ETHUSDT", side="BUY", type="LIMIT", quantity=0.01,
                           price=round(last * 1.05, 2), timeInForce="IOC")
    check(ioc["timeInForce"] == "IOC", f"an IOC order: {ioc}")
    deadline = time.time() + 15
    while True:
        status = client.query_order(symbol="ETHUSDT", orderId=ioc["orderId"])["status"]
        if status != "NEW" or time.time() > deadline:
            break
        time.sleep(0.1)
    check(status == "FILLED", f"a reachable IOC fills: {status}")
    # A reachable fill-or-kill order fills whole, in one trade.
    fok = client.new_order(symbol="ETHUSDT", side="BUY", type="LIMIT", quantity=0.02,
                           price=round(last * 1.05, 2), timeInForce="FOK")
    check(fok["timeInForce"] == "FOK", f"a FOK order: {fok}")
    deadline = time.time() + 15
    while True:
        status = client.query_order(symbol="ETHUSDT", orderId=fok["orderId"])["status"]
        if status != "NEW" or time.time() > deadline:
            break
        time.sleep(0.1)
    check(status == "FILLED", f"a reachable FOK fills: {status}")
    fok_trades = client.get_account_trades(symbol="ETHUSDT", orderId=fok["orderId"])
    check(len(fok_trades) == 1 and float(fok_trades[0]["qty"]) == 0.02, f"FOK fills whole: {fok_trades}")
    client.new_order(symbol="ETHUSDT", side="SELL", type="MARKET", quantity=0.03, reduceOnly="true")
    run_conditional_orders(client)
    # A batch answers each order in turn: placed, or refused with Binance's code.
    batch = client.new_batch_order(batchOrders=[
        {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.01",
         "timeInForce": "GTC", "price": "2350"},
        {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.01",
         "timeInForce": "GTC"},
    ])
    check(len(batch) == 2 and batch[0]["status"] == "NEW", f"the first order placed: {batch}")
    check(batch[1].get("code") == -1102, f"the second refused for its missing price: {batch}")
    answer = client.cancel_open_orders(symbol="ETHUSDT")
    check(answer == {"code": 200, "msg": "The operation of cancel all open order is done."},
          f"Binance's acknowledgement: {answer}")
    check(client.get_orders(symbol="ETHUSDT") == [], "cancel all leaves none open")
    client.get_all_orders(symbol="ETHUSDT")
    client.get_account_trades(symbol="ETHUSDT")
    for row in client.get_income_history(incomeType="COMMISSION"):
        check(row["incomeType"] == "COMMISSION" and float(row["income"]) <= 0, f"a fee row {row}")
    # The connector's limit usage reads Binance's rate headers, the order counts among them.
    counting = UMFutures(key=key, secret=secret, base_url=base, show_limit_usage=True)
    placed = counting.new_order(symbol="ETHUSDT", side="BUY", type="LIMIT", quantity=0.01,
                                price=2300, timeInForce="GTC")
    usage = placed["limit_usage"]
    for header in ("x-mbx-used-weight-1m", "x-mbx-order-count-1m", "x-mbx-order-count-10s"):
        check(int(usage.get(header, 0)) >= 1, f"{header} in the limit usage: {usage}")
    counting.cancel_open_orders(symbol="ETHUSDT")


run_ccxt()
run_ccxt_algo_orders()
run_connector()
print("ok")
