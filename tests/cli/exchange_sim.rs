//! The real `keel exchange-sim` binary, driven by the adapter over the network.

use std::process::Stdio;

use keel_exchange::binance::{BinanceConfig, BinanceExchange, Signer};
use keel_kernel::exchange::{Exchange, OrderRequest, OrderType, PlaceOutcome};
use keel_kernel::ids::ClientOrderId;
use keel_kernel::market::Side;
use keel_kernel::money::{Price, Qty};
use keel_kernel::order::OrderStatus;
use rust_decimal_macros::dec;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn the_keel_exchange_sim_binary_serves_the_adapter_through_faults() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "exchange-sim",
            "--port",
            "0",
            "--seed",
            "3",
            "--candle-ms",
            "100",
        ])
        .args(["--faults", "unknown_rate=0.5,latency_ms=5"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starting keel exchange-sim");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next_line().await.unwrap().expect("the address line");
    let addr = line
        .strip_prefix("exchange-sim listening on ")
        .expect(&line)
        .to_owned();

    let signer = Signer::Hmac {
        secret: "keel-sim-secret".to_owned(),
    };
    let mut config = BinanceConfig::at(
        &format!("http://{addr}"),
        &format!("ws://{addr}"),
        "keel-sim-key".to_owned(),
        signer,
    );
    config.request_timeout_ms = 2_000;
    let exchange = BinanceExchange::connect(config).await.unwrap();
    let symbol = keel_kernel::ids::Symbol::new("BTCUSDT").unwrap();
    let request = OrderRequest {
        client_order_id: ClientOrderId::new("bin-1").unwrap(),
        symbol: symbol.clone(),
        side: Side::Buy,
        order_type: OrderType::Limit {
            price: Price::new(dec!(30000)).unwrap(),
        },
        qty: Qty::new(dec!(0.01)).unwrap(),
        reduce_only: false,
    };
    let outcome = exchange.place(&request).await;
    assert!(matches!(outcome, PlaceOutcome::Accepted(_)), "{outcome:?}");
    let found = exchange
        .order(&symbol, &request.client_order_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.status, OrderStatus::New);
    let cancelled = exchange
        .cancel(&symbol, &request.client_order_id)
        .await
        .unwrap();
    assert_eq!(cancelled.status, OrderStatus::Canceled);

    let placements: serde_json::Value = reqwest::get(format!("http://{addr}/admin/placements"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(placements["bin-1"], 1);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn the_binary_refuses_bad_fault_lists_with_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["exchange-sim", "--faults", "unknown_rate=7"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown_rate must be between 0 and 1"),
        "{stderr}"
    );
}
