//! How `keel demo` finds its plugins: in the checkout it is run from, built there when missing
//! (just the two it runs, whatever `CARGO_TARGET_DIR` says); from `--plugins-dir`; and, outside a
//! checkout without one, an error that says what to do.

use super::*;

/// What `keel demo` prints on stdout and stderr when it stops by itself.
async fn demo_fails(cwd: &Path, args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("demo")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--port", "0"])
        .args(args)
        .current_dir(cwd)
        .env_remove("KEEL_PLUGINS_DIR")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT_MAX, output)
        .await
        .expect("keel demo stops by itself")
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn outside_a_checkout_the_demo_says_where_its_plugins_come_from() {
    let elsewhere = tempfile::tempdir().unwrap();
    let error = demo_fails(elsewhere.path(), &[]).await;
    for needed in [
        "rsi_reversion.wasm, sma_cross.wasm",
        "--plugins-dir DIR",
        "KEEL_PLUGINS_DIR",
        "not inside a Keel checkout",
    ] {
        assert!(error.contains(needed), "{needed:?} not in {error}");
    }
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let error = demo_fails(elsewhere.path(), &["--plugins-dir", dir]).await;
    assert!(
        error.contains(&format!(
            "--plugins-dir {dir} holds no rsi_reversion.wasm, sma_cross.wasm"
        )),
        "{error}"
    );
}

/// Copies `from` into `to`, leaving out what `skip` says.
fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if skip(&path) {
            continue;
        }
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &target, skip);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[tokio::test]
async fn in_a_checkout_the_demo_builds_just_its_plugins_there_whatever_cargo_target_dir_says() {
    // A checkout of the plugins' sources and the WIT. The compiled dependencies of the repository's
    // own plugin build come along, when there are any, to save the machine a cold build; every
    // component is left out, so the demo must build the ones it runs.
    let root = repo_root();
    let checkout = tempfile::tempdir().unwrap();
    copy_tree(&root.join("wit"), &checkout.path().join("wit"), &|_| false);
    let components = root.join("plugins-example/target/wasm32-wasip2/release");
    copy_tree(
        &root.join("plugins-example"),
        &checkout.path().join("plugins-example"),
        &|path| {
            path.parent() == Some(components.as_path())
                && path
                    .extension()
                    .is_some_and(|x| x == "wasm" || x == "inputs")
        },
    );
    let built = checkout
        .path()
        .join("plugins-example/target/wasm32-wasip2/release");
    let cargo_target = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let cwd = checkout.path().join("plugins-example/sma-cross");

    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .arg("demo")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--port", "0", "--speed-ms", "50"])
        .current_dir(&cwd)
        .env("CARGO_TARGET_DIR", cargo_target.path())
        .env_remove("KEEL_PLUGINS_DIR")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    // A cold build of the two plugins takes minutes on a loaded machine.
    let build_max = WAIT_MAX * 10;
    let url = tokio::time::timeout(build_max, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("http://") {
                return line;
            }
            printed.push(line);
        }
        panic!("the demo ended before serving: {printed:?}");
    })
    .await
    .expect("the demo builds its plugins and serves");
    assert!(
        printed
            .iter()
            .any(|l| l.contains("building the example plugins")),
        "{printed:?}, then {url}"
    );
    let mut made: Vec<String> = std::fs::read_dir(&built)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".wasm"))
        .collect();
    made.sort();
    assert_eq!(
        made,
        ["rsi_reversion.wasm", "sma_cross.wasm"],
        "in {built:?}"
    );
    let stray: Vec<_> = std::fs::read_dir(cargo_target.path()).unwrap().collect();
    assert!(
        stray.is_empty(),
        "CARGO_TARGET_DIR was written to: {stray:?}"
    );
    let base = url
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches("/internal/health")
        .to_owned();
    wait_for("the demo to be ready", || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(WAIT_MAX, child.wait())
        .await
        .expect("the demo stops on SIGINT")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
