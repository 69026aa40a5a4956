//! `keel config check`, as an operator runs it.

use keel_testkit::repo_root;

fn config_check(file: &std::path::Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["config", "check"])
        .arg(file)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn the_example_config_passes_and_every_secret_is_masked() {
    let example = repo_root().join("deploy/keel.example.toml");
    let secret = "a-jwt-secret-from-the-environment-0123456789";
    let (ok, stdout, stderr) = config_check(
        &example,
        &[
            ("KEEL_JWT_SECRET", secret),
            (
                "KEEL_DATABASE_URL",
                "postgres://keel_host:pw-in-url@db/keel",
            ),
        ],
    );
    assert!(ok, "{stderr}");
    for hidden in [secret, "pw-in-url", "keel-sim-secret", "keel-sim-key"] {
        assert!(!stdout.contains(hidden), "{hidden} printed:\n{stdout}");
    }
    assert!(
        stdout.contains("postgres://keel_host:********@db/keel"),
        "{stdout}"
    );
    assert!(stdout.contains("lease_ttl_ms = 15000"), "{stdout}");
}

/// A secret as `openssl rand -hex 32` makes one.
const REAL_SECRET: &str = "9f2c41d07be3a85c16e4f09b7a3d52c8e1f60b94d7a2c53e08b1f6d49a7c2e35";

#[test]
fn placeholder_secrets_are_refused_naming_the_key() {
    let example = repo_root().join("deploy/keel.example.toml");
    for secret in [
        None,
        Some("replace-me-with-32-or-more-random-bytes-please"),
        Some("changeme-changeme-changeme-changeme"),
        Some("00000000000000000000000000000000000000"),
    ] {
        let env: Vec<(&str, &str)> = secret.map(|s| ("KEEL_JWT_SECRET", s)).into_iter().collect();
        let (ok, stdout, stderr) = config_check(&example, &env);
        assert!(!ok, "{secret:?} accepted:\n{stdout}");
        assert!(stderr.contains("api.jwt_secret"), "{secret:?}: {stderr}");
        assert!(
            stderr.contains("openssl rand -hex 32"),
            "{secret:?}: {stderr}"
        );
        if let Some(secret) = secret {
            assert!(!stderr.contains(secret), "the secret printed: {stderr}");
        }
    }
    let (ok, _, stderr) = config_check(&example, &[("KEEL_JWT_SECRET", REAL_SECRET)]);
    assert!(ok, "{stderr}");
}

#[test]
fn a_bad_file_gets_an_error_naming_the_file_the_key_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo_root().join("deploy/keel.example.toml")).unwrap();
    let cases = [
        (
            example.replace("lease_ttl_ms = 15000", "lease_ttl_ms = \"long\""),
            "lease_ttl_ms",
        ),
        (
            example.replace("[host]", "[host]\nkil_switch = true"),
            "kil_switch",
        ),
        (
            example.replace("lease_renew_ms = 5000", "lease_renew_ms = 9000"),
            "instance.lease_renew_ms",
        ),
        (
            example.replace("ws://127.0.0.1:9000", "http://127.0.0.1:9000"),
            "exchange.ws_url",
        ),
    ];
    for (index, (text, key)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{index}.toml"));
        std::fs::write(&file, text).unwrap();
        let (ok, _, stderr) = config_check(&file, &[("KEEL_JWT_SECRET", REAL_SECRET)]);
        assert!(!ok, "case {index} passed");
        assert!(stderr.contains(&format!("bad-{index}.toml")), "{stderr}");
        assert!(
            stderr.contains(key),
            "case {index} does not name {key}: {stderr}"
        );
    }
}
