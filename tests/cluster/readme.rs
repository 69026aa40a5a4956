//! README.md's "Several instances on one Postgres", run as a reader runs it: the commands are
//! read from the section's `sh` blocks and run in bash from the checkout, on an empty database
//! that the block's own SQL creates. Only what a shared machine needs to differ is substituted,
//! each named by a constant below: the server's URL, the database's and the two login roles'
//! names (unique to the run, dropped after it and by the next run if it died), the ports, and
//! `keel` (the binary under test, first on PATH). The instances read deploy/keel.example.toml as
//! written; the database URLs, the exchange's address and instance a's listen address are
//! overridden through the `KEEL_*` variables that file documents.

use std::path::Path;
use std::process::Stdio;

use sqlx::{Connection, Executor, PgConnection};
use tokio::process::{Child, Command};

use crate::harness::{WAIT_MAX, repo_root, wait_for};
use crate::support::{DEFAULT_SERVER_URL, url_with};

/// The section of README.md run here.
const HEADING: &str = "## Several instances on one Postgres";
/// The server the README's `psql` connects to.
const README_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The README's database and login roles, renamed for the run.
const README_DATABASE: &str = "CREATE DATABASE keel ";
const README_OWNER: &str = "keel_owner";
const README_HOST: &str = "keel_host";
/// The role the migrations grant to by name: one per server, shared by every database on it, so
/// the README's `CREATE ROLE` of it fails when it exists, and it is never dropped here.
const SHARED_ROLE_EXISTS: &str = "ERROR:  role \"keel_app\" already exists";
/// The ports the README's commands name: the simulator, instance a (deploy/keel.example.toml)
/// and instance b.
const README_SIM_PORT: &str = "--port 9000";
const README_A: &str = "127.0.0.1:8080";
const README_B: &str = "127.0.0.1:8081";

fn server_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.to_owned())
}

/// `value` as one word of bash.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The run's database and roles; [`Names::drop_all`] removes them, and those of runs whose
/// process is gone.
struct Names {
    database: String,
    owner: String,
    host: String,
}

impl Names {
    fn of(pid: u32) -> Names {
        Names {
            // The store tests' sweep drops `keel_t_<pid>_…` databases of dead processes too.
            database: format!("keel_t_{pid}_readme"),
            owner: format!("keel_r{pid}_owner"),
            host: format!("keel_r{pid}_host"),
        }
    }

    async fn drop_all(&self) {
        let mut su = PgConnection::connect(&server_url()).await.unwrap();
        let roles: Vec<String> = sqlx::query_scalar(
            "SELECT rolname FROM pg_roles WHERE rolname ~ '^keel_r[0-9]+_(owner|host)$'",
        )
        .fetch_all(&mut su)
        .await
        .unwrap();
        let pids: std::collections::BTreeSet<u32> = roles
            .iter()
            .filter_map(|r| r["keel_r".len()..].split('_').next()?.parse().ok())
            .collect();
        for pid in pids {
            let gone = !Path::new(&format!("/proc/{pid}")).exists();
            if pid == std::process::id() || gone {
                let names = Names::of(pid);
                for statement in [
                    format!(
                        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                        names.database
                    ),
                    format!("DROP ROLE IF EXISTS \"{}\"", names.owner),
                    format!("DROP ROLE IF EXISTS \"{}\"", names.host),
                ] {
                    su.execute(statement.as_str()).await.unwrap();
                }
            }
        }
        su.close().await.unwrap();
    }
}

/// A command of the README running in the background (`… &`), in a process group of its own
/// so that everything it started stops with it.
struct Background {
    child: Child,
    command: String,
    log: std::path::PathBuf,
}

impl Background {
    /// SIGTERM to the group (a `keel serve` stops cleanly on it), then waits.
    async fn stop(mut self) {
        let pid = self.child.id().expect("running");
        signal_group(pid, "TERM");
        tokio::time::timeout(WAIT_MAX, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not stop", self.command))
            .unwrap();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            signal_group(pid, "KILL");
        }
    }
}

fn signal_group(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{name}"), "--", &format!("-{pid}")])
        .status();
}

/// A reader's shell: the variables set so far, and what runs in the background.
struct Reader {
    prelude: Vec<String>,
    dir: tempfile::TempDir,
    background: Vec<Background>,
}

impl Reader {
    fn script(&self, command: &str) -> String {
        format!(
            "set -euo pipefail\n{}\n{command}\n",
            self.prelude.join("\n")
        )
    }

    fn bash(&self, command: &str) -> Command {
        let mut bash = Command::new("bash");
        bash.arg("-c")
            .arg(self.script(command))
            .current_dir(repo_root())
            // A reader's environment names no test database.
            .env_remove("KEEL_TEST_DATABASE_URL")
            .kill_on_drop(true);
        bash
    }

    /// Runs `command` to its end and returns its stdout and stderr; it must succeed.
    async fn run(&self, command: &str) -> (String, String) {
        let output = tokio::time::timeout(WAIT_MAX, self.bash(command).output())
            .await
            .unwrap_or_else(|_| panic!("{command}: still running after {WAIT_MAX:?}"))
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "{command}\nexit {:?}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        (stdout, stderr)
    }

    /// Runs an assignment (`export A=$(…) B=…`, `T=$(…)`) once and keeps its values, so the
    /// commands after it see the same secret.
    async fn assign(&mut self, command: &str) {
        let names: Vec<&str> = command
            .split_whitespace()
            .filter_map(|word| word.split_once('=').map(|(name, _)| name))
            .filter(|name| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
            .collect();
        assert!(!names.is_empty(), "{command}: assigns nothing");
        let print: Vec<String> = names.iter().map(|n| format!("\"${n}\"")).collect();
        let (stdout, _) = self
            .run(&format!("{command}\nprintf '%s\\0' {}", print.join(" ")))
            .await;
        for (name, value) in names.iter().zip(stdout.split('\0')) {
            assert!(!value.is_empty(), "{command}: {name} is empty");
            self.prelude
                .push(format!("export {name}={}", quoted(value)));
        }
    }

    /// Starts `command` (without its `&`) in the background, its output in a log file.
    fn spawn(&mut self, command: &str) {
        let log = self
            .dir
            .path()
            .join(format!("background-{}.log", self.background.len()));
        let file = std::fs::File::create(&log).unwrap();
        let child = self
            .bash(command)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("bash starts");
        self.background.push(Background {
            child,
            command: command.to_owned(),
            log,
        });
    }

    /// Waits until `url` answers 200; fails at once, with what the background commands
    /// printed, when one of them ended.
    async fn wait_ok(&mut self, url: &str) {
        let client = reqwest::Client::new();
        let started = std::time::Instant::now();
        loop {
            let answer = client.get(url).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            for at in 0..self.background.len() {
                if let Ok(Some(status)) = self.background[at].child.try_wait() {
                    let command = &self.background[at].command;
                    panic!("{command} ended ({status})\n{}", self.logs());
                }
            }
            assert!(
                started.elapsed() < WAIT_MAX,
                "timed out after {WAIT_MAX:?} waiting for {url} to answer 200\n{}",
                self.logs()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// What the background commands printed, for a failure's message.
    fn logs(&self) -> String {
        self.background
            .iter()
            .map(|b| {
                let text = std::fs::read_to_string(&b.log).unwrap_or_default();
                format!("--- {}\n{text}", b.command)
            })
            .collect()
    }

    /// Runs one command of the README: an assignment is kept, `… &` goes to the background,
    /// anything else runs to its end.
    async fn step(&mut self, command: &str) -> (String, String) {
        if let Some(background) = without_comment(command).trim_end().strip_suffix('&') {
            self.spawn(background);
            return Default::default();
        }
        let first = command.split_whitespace().next().unwrap_or_default();
        let assigns_only = command.starts_with("export ")
            || first.split_once('=').is_some_and(|(name, value)| {
                name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                    && value.starts_with("$(")
                    && command.trim_end().ends_with(')')
            });
        if assigns_only {
            self.assign(command).await;
            return Default::default();
        }
        self.run(command).await
    }
}

/// A one-line command without its trailing comment (a `#` after white space, outside quotes).
fn without_comment(command: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (at, c) in command.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() && !command.contains('\n') => {
                return &command[..at];
            }
            _ => {}
        }
        previous = c;
    }
    command
}

/// `text` with `from` replaced by `to`; `from` must be there, so a README that changed fails
/// here rather than running unsubstituted.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} is not in {text:?}");
    text.replace(from, to)
}

#[test]
fn a_trailing_comment_is_not_part_of_the_command() {
    assert_eq!(without_comment("keel a &   # b"), "keel a &   ");
    assert_eq!(
        without_comment("echo 'a # b' \"#\" # c"),
        "echo 'a # b' \"#\" "
    );
    assert_eq!(without_comment("a#b"), "a#b");
}

#[tokio::test]
async fn the_readme_starts_two_instances_on_an_empty_database() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = keel_testkit::readme::sh_blocks(keel_testkit::readme::section(&readme, HEADING));
    assert_eq!(blocks.len(), 2, "the section's two sh blocks: {blocks:#?}");
    let start = keel_testkit::readme::commands(blocks[0]);
    let use_it = keel_testkit::readme::commands(blocks[1]);

    let names = Names::of(std::process::id());
    names.drop_all().await;
    let server = server_url();
    let (sim, a, b) = (
        keel_testkit::free_port(),
        keel_testkit::free_port(),
        keel_testkit::free_port(),
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_keel"), bin.join("keel")).unwrap();
    let overrides = [
        (
            "KEEL_DATABASE_URL",
            url_with(&server, &names.host, &names.database),
        ),
        (
            "KEEL_DATABASE_ADMIN_URL",
            url_with(&server, &names.owner, &names.database),
        ),
        ("KEEL_EXCHANGE_REST_URL", format!("http://127.0.0.1:{sim}")),
        ("KEEL_EXCHANGE_WS_URL", format!("ws://127.0.0.1:{sim}")),
        ("KEEL_API_LISTEN", format!("127.0.0.1:{a}")),
    ];
    let mut prelude = vec![format!(
        "export PATH={}:\"$PATH\"",
        quoted(&bin.display().to_string())
    )];
    prelude.extend(
        overrides
            .iter()
            .map(|(k, v)| format!("export {k}={}", quoted(v))),
    );
    let mut reader = Reader {
        prelude,
        dir,
        background: Vec::new(),
    };

    for command in &start {
        let command = if command.starts_with("psql ") {
            let command = substitute(command, README_SERVER, &server);
            let command = substitute(&command, README_OWNER, &names.owner);
            let command = substitute(&command, README_HOST, &names.host);
            substitute(
                &command,
                README_DATABASE,
                &format!("CREATE DATABASE {} ", names.database),
            )
        } else if command.contains(README_SIM_PORT) {
            substitute(command, README_SIM_PORT, &format!("--port {sim}"))
        } else if command.contains(README_B) {
            substitute(command, README_B, &format!("127.0.0.1:{b}"))
        } else {
            command.clone()
        };
        let (_, stderr) = reader.step(&command).await;
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("ERROR:") && *l != SHARED_ROLE_EXISTS)
            .collect();
        assert!(errors.is_empty(), "{command}\n{stderr}");
    }
    assert_eq!(
        reader.background.len(),
        3,
        "the simulator and two instances"
    );
    for port in [a, b] {
        reader
            .wait_ok(&format!("http://127.0.0.1:{port}/readyz"))
            .await;
    }

    let mut profile_id = None;
    let mut ownership_read = false;
    for command in &use_it {
        let command = command.replace(README_A, &format!("127.0.0.1:{a}"));
        let command = command.replace(README_B, &format!("127.0.0.1:{b}"));
        if command.contains("keel_profiles_owned") {
            // The instances share the new profile out within a round of their loop: the reader
            // asks again until one has it.
            wait_for("one instance to own the profile", || async {
                let (stdout, _) = reader.run(&command).await;
                let mut owned: Vec<&str> = stdout.lines().collect();
                owned.sort();
                owned == ["keel_profiles_owned 0", "keel_profiles_owned 1"]
            })
            .await;
            ownership_read = true;
            continue;
        }
        let (stdout, _) = reader.step(&command).await;
        if command.contains("/api/v1/profiles") {
            let created: serde_json::Value = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{command}: not JSON ({e}): {stdout}"));
            profile_id = created["profile_id"].as_str().map(str::to_owned);
        }
    }
    let profile_id = profile_id.expect("the README creates a profile");
    assert!(
        ownership_read,
        "the README reads which instance owns the profile"
    );

    // The database agrees: one lease on the profile.
    let mut su = PgConnection::connect(&url_with(&server, "postgres", &names.database))
        .await
        .unwrap();
    let leases: i64 = sqlx::query_scalar("SELECT count(*) FROM profile_leases WHERE lock_key = $1")
        .bind(format!("profile:{profile_id}"))
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert_eq!(leases, 1);
    su.close().await.unwrap();

    for background in reader.background.drain(..).rev() {
        background.stop().await;
    }
    names.drop_all().await;
}
