"""Every REST fault kind of `keel exchange-sim`, as ccxt's binanceusdm and
binance-futures-connector's UMFutures meet it: each client raises its own error for Binance's
answer (429, 503 -1001, 503 -1007, a lost response, -1021 for a skewed clock), an order whose
answer was lost or unknown exists and is found by its client order id once the faults are off,
and latency only slows calls down. Usage: faults.py BASE_URL API_KEY API_SECRET.
Exits non-zero on the first unexpected outcome."""

import sys
import time
import urllib.request

import ccxt
import requests
from binance.error import ClientError, ServerError
from binance.um_futures import UMFutures

base, key, secret = sys.argv[1], sys.argv[2], sys.argv[3]
SYMBOL = "BTC/USDT:USDT"


def check(condition, what):
    if not condition:
        raise SystemExit(f"FAILED: {what}")


def set_faults(text):
    request = urllib.request.Request(f"{base}/admin/faults", data=text.encode(), method="PUT")
    with urllib.request.urlopen(request, timeout=10) as answer:
        check(answer.status == 200, f"faults {text!r} set")


def ccxt_client(timeout_ms=10000):
    exchange = ccxt.binanceusdm({"apiKey": key, "secret": secret, "timeout": timeout_ms})
    for name in list(exchange.urls["api"]):
        if name.startswith("fapi"):
            version = exchange.urls["api"][name].rsplit("/", 1)[-1]
            exchange.urls["api"][name] = f"{base}/fapi/{version}"
    exchange.options["fetchCurrencies"] = False
    exchange.load_markets()
    return exchange


def raises(call, kinds, what):
    try:
        call()
    except kinds as error:
        return error
    except Exception as error:  # noqa: BLE001 - the wrong kind is the failure reported
        raise SystemExit(f"FAILED: {what}: {type(error).__name__}: {error}")
    raise SystemExit(f"FAILED: {what}: no error")


def ccxt_faults():
    ex = ccxt_client()
    set_faults("rate_limit_rate=1,retry_after_s=1")
    # ccxt raises DDoSProtection (RateLimitExceeded's parent) for a 429 from Binance.
    raises(ex.fetch_balance, ccxt.DDoSProtection, "ccxt: a 429 is DDoSProtection")
    set_faults("unavailable_rate=1")
    # ccxt maps -1001 to OperationFailed (a bare 503 would be ExchangeNotAvailable).
    error = raises(ex.fetch_balance, (ccxt.OperationFailed, ccxt.ExchangeNotAvailable), "ccxt: a 503 -1001 raises")
    check("-1001" in str(error), f"ccxt names -1001: {error}")
    # An order answered -1007 was placed: the status is unknown to the client, not to Binance.
    set_faults("unknown_rate=1")
    unknown = f"ccxt-unknown-{int(time.time() * 1000)}"
    error = raises(
        lambda: ex.create_order(SYMBOL, "limit", "buy", 0.01, 30000, {"clientOrderId": unknown}),
        ccxt.BaseError,
        "ccxt: a 503 -1007 on an order raises",
    )
    check("-1007" in str(error), f"ccxt names -1007: {error}")
    # A response lost past the client's timeout: RequestTimeout, and the order exists.
    set_faults("lost_response_rate=1,lost_response_hold_ms=2500")
    lost = f"ccxt-lost-{int(time.time() * 1000)}"
    hasty = ccxt_client(timeout_ms=800)
    raises(
        lambda: hasty.create_order(SYMBOL, "limit", "buy", 0.01, 30000, {"clientOrderId": lost}),
        ccxt.RequestTimeout,
        "ccxt: a lost response is RequestTimeout",
    )
    set_faults("latency_ms=300")
    started = time.monotonic()
    check(ex.fetch_balance()["USDT"]["total"] > 0, "ccxt: latency only slows a call")
    check(time.monotonic() - started >= 0.3, "ccxt: the latency was there")
    set_faults("")
    for client_id in (unknown, lost):
        order = ex.fetch_order(None, SYMBOL, {"origClientOrderId": client_id})
        check(order["clientOrderId"] == client_id and order["status"] == "open", f"ccxt finds {client_id}: {order}")
        ex.cancel_order(None, SYMBOL, {"origClientOrderId": client_id})
    # The server's clock a minute behind: -1021 (InvalidNonce), until ccxt adjusts for it.
    set_faults("clock_skew_ms=-60000")
    raises(ex.fetch_balance, ccxt.InvalidNonce, "ccxt: a skewed clock is InvalidNonce (-1021)")
    ex.options["adjustForTimeDifference"] = True
    ex.load_time_difference()
    check(ex.fetch_balance()["USDT"]["total"] > 0, "ccxt: adjusted for the time difference")
    set_faults("")


def connector_faults():
    client = UMFutures(key=key, secret=secret, base_url=base, timeout=10)
    set_faults("rate_limit_rate=1,retry_after_s=1")
    error = raises(client.balance, ClientError, "connector: a 429 is a ClientError")
    check(error.status_code == 429, f"connector: status 429: {error}")
    set_faults("unavailable_rate=1")
    error = raises(client.balance, ServerError, "connector: a 503 is a ServerError")
    check(error.status_code == 503, f"connector: status 503: {error}")
    set_faults("unknown_rate=1")
    unknown = f"conn-unknown-{int(time.time() * 1000)}"
    order = dict(symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                 quantity=0.01, price=30000, newClientOrderId=unknown)
    error = raises(lambda: client.new_order(**order), ServerError, "connector: -1007 on an order")
    check(error.status_code == 503 and "-1007" in str(error), f"connector names -1007: {error}")
    set_faults("lost_response_rate=1,lost_response_hold_ms=2500")
    lost = f"conn-lost-{int(time.time() * 1000)}"
    hasty = UMFutures(key=key, secret=secret, base_url=base, timeout=0.8)
    raises(lambda: hasty.new_order(**{**order, "newClientOrderId": lost}),
           requests.exceptions.Timeout, "connector: a lost response times out")
    set_faults("")
    for client_id in (unknown, lost):
        found = client.query_order("BTCUSDT", origClientOrderId=client_id)
        check(found["clientOrderId"] == client_id and found["status"] == "NEW", f"connector finds {client_id}: {found}")
        client.cancel_order("BTCUSDT", origClientOrderId=client_id)
    set_faults("clock_skew_ms=-60000")
    error = raises(client.balance, ClientError, "connector: a skewed clock is refused")
    check(error.error_code == -1021, f"connector: -1021: {error}")
    set_faults("")


ccxt_faults()
connector_faults()
print("ok")
