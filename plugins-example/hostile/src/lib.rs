//! A deliberately hostile strategy, used by Keel's tests to prove the sandbox holds.
//!
//! Config key `attack` picks the misbehaviour, run on every `on-candle`:
//! `infinite-loop`, `memory-growth`, `recursion`, `panic`, `intent-flood`, `oversized-log`,
//! `bad-numbers`, `read-file`, `open-socket`, `resolve-name`, `read-env`, `stdout`,
//! `clock-and-random`, `scavenge` (looks for what an earlier instance left in memory).
//! `eprintln`, `panic-message` (a division by zero), `sleep` (one second), `poll` (waits on a
//! pollable that is never ready), `udp-socket`, `tcp-socket`, `slow-legal` (sleeps 50 ms, a legal call
//! under the deadline), `busy-legal` (keeps the host busy for its whole call without breaking a
//! rule: `busy_calls` calls of `account.lookup-symbol` with a 1 MiB name, which the host copies
//! and checks each time). In `init`: `println-in-init`,
//! `panic-in-init`, `sleep-forever-in-init`.
//! `fail-init` refuses the configuration. `echo` (not hostile) answers each
//! candle with `cancel("<label>-<open-time-ms>")`.
//! Probes that ask for authority log `<probe>: denied: <error>` or `<probe>: GRANTED`.

use std::hint::black_box;

use keel_guest::{
    AccountView, Candle, Config, EntryRequest, ExitRequest, Intent, Level, Param, PositionSide,
    Price, Size, Strategy,
};

struct Hostile {
    attack: String,
    label: String,
    hoard: Vec<Vec<u8>>,
    busy_calls: u32,
}

impl Strategy for Hostile {
    const PARAMS: &'static [Param] = &[
        Param::text("attack", "", "The misbehaviour (see the crate's documentation)."),
        Param::text("label", "echo", "What `echo` names its cancels after."),
        Param::int(
            "busy_calls",
            100,
            "Host calls with a 1 MiB name `busy-legal` makes per candle.",
        )
        .range(0.0, 100_000.0),
    ];

    fn init(config: &Config) -> Result<Self, String> {
        let attack = config.text("attack")?;
        match attack.as_str() {
            "fail-init" => return Err("hostile plugin refuses this configuration".to_string()),
            "println-in-init" => println!("hello from init"),
            "panic-in-init" => panic!("hostile plugin panics in init"),
            "sleep-forever-in-init" => std::thread::sleep(std::time::Duration::from_secs(1 << 40)),
            _ => {}
        }
        let label = config.text("label")?;
        let busy_calls = config.parse("busy_calls")?;
        Ok(Hostile {
            attack,
            label,
            hoard: Vec::new(),
            busy_calls,
        })
    }

    fn on_candle(&mut self, candle: &Candle, _account: &AccountView) -> Vec<Intent> {
        match self.attack.as_str() {
            // Not hostile: answers each candle with a cancel naming it, so tests can see which
            // instance saw which candle.
            "echo" => {
                return vec![Intent::Cancel(format!(
                    "{}-{}",
                    self.label, candle.open_time_ms
                ))];
            }
            "infinite-loop" => infinite_loop(),
            "memory-growth" => self.grow_memory(),
            "recursion" => {
                black_box(recurse(black_box(1)));
            }
            "panic" => panic!("hostile plugin panics on purpose"),
            "intent-flood" => return (0..10_000).map(Intent::SetTimer).collect(),
            "oversized-log" => oversized_log(),
            "bad-numbers" => return bad_numbers(candle.symbol),
            "read-file" => report("read-file", std::fs::read("/etc/passwd").map(|_| ())),
            "open-socket" => report(
                "open-socket",
                std::net::TcpStream::connect(("127.0.0.1", 5432)).map(|_| ()),
            ),
            "resolve-name" => {
                use std::net::ToSocketAddrs;
                report(
                    "resolve-name",
                    ("localhost", 80).to_socket_addrs().map(|_| ()),
                )
            }
            "read-env" => read_env(),
            "stdout" => {
                println!("hello from stdout");
                eprintln!("hello from stderr");
            }
            "eprintln" => eprintln!("hostile plugin writes to stderr"),
            "panic-message" => {
                let zero = black_box(0_u64);
                black_box(candle.open_time_ms as u64 / zero);
            }
            "sleep" => std::thread::sleep(std::time::Duration::from_secs(1)),
            "poll" => poll_forever(),
            "udp-socket" => report(
                "udp-socket",
                std::net::UdpSocket::bind(("127.0.0.1", 0)).map(|_| ()),
            ),
            "tcp-socket" => report(
                "tcp-socket",
                std::net::TcpListener::bind(("127.0.0.1", 0)).map(|_| ()),
            ),
            "slow-legal" => std::thread::sleep(std::time::Duration::from_millis(50)),
            "busy-legal" => self.busy(),
            "clock-and-random" => clock_and_random(),
            "scavenge" => return scavenge(&self.label),
            _ => {}
        }
        Vec::new()
    }
}

/// Grows memory by one MiB outside the allocator's sight, counts the words in it that are not
/// zero (what an earlier instance of this slot left behind), then fills it with a pattern for
/// the next instance to find. Answers `cancel("<label>-dirty-<count>")`.
fn scavenge(label: &str) -> Vec<Intent> {
    const PAGES: usize = 16;
    let first_page = core::arch::wasm32::memory_grow(0, PAGES);
    if first_page == usize::MAX {
        return vec![Intent::Cancel(format!("{label}-no-memory"))];
    }
    let start = first_page * 65_536;
    let mut dirty = 0_usize;
    for address in (start..start + PAGES * 65_536).step_by(8) {
        // SAFETY: the pages were just grown for this function alone: no allocation lives there.
        unsafe {
            let word = address as *mut u64;
            if word.read_volatile() != 0 {
                dirty += 1;
            }
            word.write_volatile(0xA5A5_A5A5_A5A5_A5A5);
        }
    }
    vec![Intent::Cancel(format!("{label}-dirty-{dirty}"))]
}

unsafe extern "C" {
    /// wasi-libc's `poll(2)`, which waits through `wasi:io/poll`.
    fn poll(fds: *mut core::ffi::c_void, nfds: usize, timeout_ms: i32) -> i32;
}

/// Waits with libc's `poll` on nothing for as long as it may (about 24 days).
fn poll_forever() {
    // SAFETY: no descriptors are passed, so nothing is read or written through the pointer.
    black_box(unsafe { poll(core::ptr::null_mut(), 0, i32::MAX) });
}

fn infinite_loop() {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

impl Hostile {
    /// Makes the host copy and check a 1 MiB symbol name `busy_calls` times: legal calls (the
    /// name is refused, as any unknown name is) that cost the host, not the plugin's fuel.
    fn busy(&mut self) {
        if self.hoard.is_empty() {
            self.hoard.push(vec![b'B'; 1 << 20]);
        }
        let name = std::str::from_utf8(&self.hoard[0]).unwrap_or("B");
        for _ in 0..self.busy_calls {
            black_box(keel_guest::account::lookup_symbol(black_box(name)));
        }
    }

    fn grow_memory(&mut self) {
        loop {
            // Reserve without zeroing, so memory runs out long before fuel does.
            let mut chunk = Vec::with_capacity(1 << 20);
            chunk.push(1u8);
            self.hoard.push(black_box(chunk));
        }
    }
}

#[allow(unconditional_recursion)] // the point: recursion without end
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 16]);
    recurse(black_box(depth + 1)) + frame[3]
}

fn oversized_log() {
    keel_guest::log(Level::Info, &"x".repeat(1 << 20));
    for line in 0..1_000 {
        keel_guest::log(Level::Info, &format!("flood line {line}"));
    }
}

fn bad_numbers(symbol: u32) -> Vec<Intent> {
    let entry = |size: Size, price: Price, stop_loss: Option<f64>| {
        Intent::Entry(EntryRequest {
            symbol,
            side: PositionSide::Long,
            size,
            price,
            stop_loss,
            take_profit: None,
            tag: "bad".to_string(),
        })
    };
    vec![
        entry(Size::QuoteNotional(f64::NAN), Price::Market, None),
        entry(Size::BaseQty(f64::INFINITY), Price::Market, None),
        entry(
            Size::FreeCapitalFraction(-1.0),
            Price::Limit(f64::NEG_INFINITY),
            None,
        ),
        entry(
            Size::QuoteNotional(1e300),
            Price::Limit(-5.0),
            Some(f64::NAN),
        ),
        Intent::Exit(ExitRequest {
            symbol,
            fraction: 1e308,
            price: Price::Market,
            tag: String::new(),
        }),
    ]
}

fn read_env() {
    // The working directory is wasi-libc's fiction ("/" with nothing preopened), not authority.
    let vars: Vec<_> = std::env::vars().collect();
    let args: Vec<_> = std::env::args().collect();
    if vars.is_empty() && args.is_empty() {
        keel_guest::log(Level::Info, "read-env: denied: no variables, no arguments");
    } else {
        keel_guest::log(Level::Info, &format!("read-env: GRANTED {vars:?} {args:?}"));
    }
}

fn clock_and_random() {
    use std::hash::BuildHasher;
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let hash = std::collections::hash_map::RandomState::new().hash_one(42u64);
    let message = format!(
        "clock-and-random: wall_ms={wall_ms} kernel_ms={} hash={hash}",
        keel_guest::now_ms()
    );
    keel_guest::log(Level::Info, &message);
}

fn report(probe: &str, outcome: std::io::Result<()>) {
    let message = match outcome {
        Ok(()) => format!("{probe}: GRANTED"),
        Err(error) => format!("{probe}: denied: {error}"),
    };
    keel_guest::log(Level::Info, &message);
}

keel_guest::export_strategy!(Hostile);
