//! `keel`: the command line of the Keel trading host.

fn main() {
    println!("keel {}", env!("CARGO_PKG_VERSION"));
}
