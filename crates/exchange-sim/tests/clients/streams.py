"""Streams through Binance's binance-futures-connector (UMFuturesWebsocketClient) and
ccxt.pro's binanceusdm, against `keel exchange-sim`.
Usage: streams.py REST_URL WS_URL API_KEY API_SECRET.
Exits non-zero on the first error, insane value or missed deadline."""

import asyncio
import json
import queue
import sys
import time

import ccxt.pro as ccxtpro
from binance.um_futures import UMFutures
from binance.websocket.um_futures.websocket_client import UMFuturesWebsocketClient

rest, ws, key, secret = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

# How long any one wait may last.
DEADLINE_S = 30
# The simulator's candles are one second wide (its default) and named so; every USDⓈ-M
# interval streams too, its forming candle updated with each played one.
INTERVAL = "1s"


def check(condition, what):
    if not condition:
        raise SystemExit(f"FAILED: {what}")


def wait_for(messages, what, wanted):
    """The first message `wanted` accepts, within the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    seen = []
    while True:
        left = deadline - time.monotonic()
        check(left > 0, f"{what} within {DEADLINE_S} s; saw {seen[-5:]}")
        try:
            message = messages.get(timeout=left)
        except queue.Empty:
            continue
        if wanted(message):
            return message
        seen.append(message)


def run_connector():
    client = UMFutures(key=key, secret=secret, base_url=rest)
    listen_key = client.new_listen_key()["listenKey"]
    messages = queue.Queue()
    stream = UMFuturesWebsocketClient(
        stream_url=ws, on_message=lambda _, text: messages.put(json.loads(text))
    )
    try:
        stream.kline(symbol="btcusdt", interval=INTERVAL, id=1)
        stream.user_data(listen_key=listen_key, id=2)
        for id in (1, 2):
            wait_for(messages, f"the answer to subscription {id}",
                     lambda m, id=id: m == {"result": None, "id": id})
        kline = wait_for(messages, "a kline", lambda m: m.get("e") == "kline")
        check(kline["s"] == "BTCUSDT" and float(kline["k"]["h"]) >= float(kline["k"]["l"]) > 0,
              f"a BTCUSDT candle: {kline}")
        stream.list_subscribe(id=3)
        listed = wait_for(messages, "the subscription list", lambda m: m.get("id") == 3)
        check(sorted(listed["result"]) == sorted([f"btcusdt@kline_{INTERVAL}", listen_key]),
              f"both subscriptions listed: {listed}")

        order = client.new_order(symbol="BTCUSDT", side="BUY", type="MARKET", quantity=0.01,
                                 newClientOrderId="connector-stream")
        # A fill's events, in Binance's order: TRADE_LITE, ACCOUNT_UPDATE, ORDER_TRADE_UPDATE.
        account = wait_for(messages, "ACCOUNT_UPDATE", lambda m: m.get("e") == "ACCOUNT_UPDATE")
        filled = wait_for(messages, "ORDER_TRADE_UPDATE FILLED",
                          lambda m: m.get("e") == "ORDER_TRADE_UPDATE"
                          and m["o"]["c"] == "connector-stream" and m["o"]["X"] == "FILLED")
        check(filled["o"]["i"] == order["orderId"], f"the order's id: {filled}")
        check(float(filled["o"]["z"]) == 0.01, f"filled quantity: {filled}")
        check(account["a"]["m"] == "ORDER", f"reason ORDER: {account}")
        position = [p for p in account["a"]["P"] if p["s"] == "BTCUSDT"]
        check(position and float(position[0]["pa"]) == 0.01, f"the position: {account}")
        balance = client.balance()
        check(account["a"]["B"][0]["wb"] == balance[0]["balance"], f"the wallet: {account}")
        client.new_order(symbol="BTCUSDT", side="SELL", type="MARKET", quantity=0.01,
                         reduceOnly="true")

        # A quarter-hour stream: the forming candle, not closed, on the quarter hour.
        stream.kline(symbol="btcusdt", interval="15m", id=6)
        wait_for(messages, "the answer to subscription 6", lambda m: m == {"result": None, "id": 6})
        forming = wait_for(messages, "a 15m kline",
                           lambda m: m.get("e") == "kline" and m["k"]["i"] == "15m")
        k = forming["k"]
        check(k["t"] % 900_000 == 0 and k["T"] == k["t"] + 900_000 - 1 and k["x"] is False,
              f"the forming quarter hour: {forming}")
        stream.unsubscribe("btcusdt@kline_15m", id=7)
        wait_for(messages, "the answer to unsubscription 7", lambda m: m == {"result": None, "id": 7})
        stream.unsubscribe(f"btcusdt@kline_{INTERVAL}", id=4)
        wait_for(messages, "the answer to the unsubscription",
                 lambda m: m == {"result": None, "id": 4})
        stream.list_subscribe(id=5)
        listed = wait_for(messages, "the subscription list", lambda m: m.get("id") == 5)
        check(listed["result"] == [listen_key], f"only the user stream left: {listed}")
    finally:
        stream.stop()


def ccxt_pro_client():
    exchange = ccxtpro.binanceusdm({"apiKey": key, "secret": secret, "timeout": 15000})
    for name in list(exchange.urls["api"]):
        if name.startswith("fapi"):
            version = exchange.urls["api"][name].rsplit("/", 1)[-1]
            exchange.urls["api"][name] = f"{rest}/fapi/{version}"
    # ccxt.pro derives Binance's /market/ws and /private/ws entry points from this one.
    exchange.urls["api"]["ws"]["linear"] = f"{ws}/ws"
    exchange.options["fetchCurrencies"] = False
    return exchange


async def run_ccxt_pro():
    exchange = ccxt_pro_client()
    symbol = "BTC/USDT:USDT"
    try:
        await exchange.load_markets()
        candles = await asyncio.wait_for(exchange.watch_ohlcv(symbol, INTERVAL), DEADLINE_S)
        check(len(candles) >= 1 and all(c[2] >= c[3] > 0 for c in candles),
              f"candles: {candles}")
        # The hour's candle forms: each update has the hour's open time and its volume so far.
        hourly = await asyncio.wait_for(exchange.watch_ohlcv(symbol, "1h"), DEADLINE_S)
        again = await asyncio.wait_for(exchange.watch_ohlcv(symbol, "1h"), DEADLINE_S)
        first, later = hourly[-1], again[-1]
        check(first[0] % 3_600_000 == 0, f"an hourly candle: {first}")
        check(later[0] > first[0] or later[5] >= first[5], f"the hour's volume grows: {first} {later}")
        price = (await exchange.fetch_ticker(symbol))["last"]
        watch = asyncio.ensure_future(exchange.watch_orders(symbol))
        # The first order may be placed before the private stream is connected: place
        # resting orders until one is streamed.
        deadline = time.monotonic() + DEADLINE_S
        placed = []
        while not watch.done():
            check(time.monotonic() < deadline, f"watch_orders within {DEADLINE_S} s")
            order = await exchange.create_order(symbol, "limit", "buy", 0.01,
                                                round(price * 0.5, 1))
            placed.append(order["id"])
            await asyncio.wait({watch}, timeout=2)
        orders = watch.result()
        check(any(o["id"] in placed and o["status"] == "open" for o in orders),
              f"a placed order streamed open: {orders}")
        for id in placed:
            await exchange.cancel_order(id, symbol)

        # A conditional order, placed through /fapi/v1/order (ccxt itself sends conditional
        # orders to the Algo Order API), streams to ccxt.pro with its trigger price.
        trigger = round(price * 2, 1)
        watch = asyncio.ensure_future(exchange.watch_orders(symbol))
        stop = await exchange.fapiPrivatePostOrder({
            "symbol": "BTCUSDT", "side": "BUY", "type": "STOP_MARKET", "quantity": "0.01",
            "stopPrice": str(trigger), "newClientOrderId": "ccxt-pro-stop"})
        # The watcher resolves on any order event (the cancels above among them); the orders
        # it heard of stay in its cache.
        deadline = time.monotonic() + DEADLINE_S
        while True:
            check(time.monotonic() < deadline, f"the stop order streamed within {DEADLINE_S} s")
            await asyncio.wait({watch}, timeout=1)
            if watch.done():
                watch.result()
                watch = asyncio.ensure_future(exchange.watch_orders(symbol))
            streamed = [o for o in (exchange.orders or []) if o["clientOrderId"] == "ccxt-pro-stop"]
            if streamed:
                break
        watch.cancel()
        check(streamed[-1]["info"]["o"] == "STOP_MARKET" and streamed[-1]["triggerPrice"] == trigger
              and streamed[-1]["status"] == "open", f"the stop order as ccxt.pro reads it: {streamed}")
        await exchange.cancel_order(str(stop["orderId"]), symbol)

        # ACCOUNT_UPDATE feeds ccxt.pro's balance and positions (the private connection is
        # already open, so the fill's event reaches both watchers).
        balance_watch = asyncio.ensure_future(exchange.watch_balance())
        positions_watch = asyncio.ensure_future(exchange.watch_positions([symbol]))
        await asyncio.sleep(0.5)
        await exchange.create_order(symbol, "market", "buy", 0.01)
        balance = await asyncio.wait_for(balance_watch, DEADLINE_S)
        check(balance["USDT"]["total"] > 0, f"a USDT balance: {balance.get('USDT')}")
        positions = await asyncio.wait_for(positions_watch, DEADLINE_S)
        check(any(p["symbol"] == symbol and p["contracts"] == 0.01 for p in positions),
              f"the position: {positions}")
        await exchange.create_order(symbol, "market", "sell", 0.01, params={"reduceOnly": True})
    finally:
        await exchange.close()


run_connector()
asyncio.run(run_ccxt_pro())
print("ok")
