//! The docs name only what the code has: every setting (`section.key`) is a key of `keel serve`'s
//! configuration, every `KEEL_*` variable and every `keel_*` name (a metric, a channel, a role, a
//! crate) is read or written by the code, and every other `snake_case` name in backticks (a JSON
//! field, a table, a limit) is a word of the code.

use std::collections::HashSet;

use super::*;

/// Every word (`[A-Za-z0-9_]+`) of the files under `dirs` whose extension is in `extensions`.
fn code_words(dirs: &[PathBuf], extensions: &[&str]) -> HashSet<String> {
    let mut words = HashSet::new();
    let mut pending: Vec<PathBuf> = dirs.to_vec();
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if path
            .extension()
            .is_some_and(|x| extensions.iter().any(|e| x == *e))
            // This file names what it looks for.
            && !path.ends_with(file!().trim_start_matches("./"))
        {
            words.extend(words_of(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    words
}

fn words_of(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
}

/// The code the docs quote, as `(checked, text)`: inline spans and the SQL, JSON, TOML and PromQL
/// blocks are checked for every name; shell, Rust and Python examples only for `KEEL_*`
/// variables, since their own variables (`broke_out`) are the example's.
fn quoted(text: &str) -> Vec<(bool, &str)> {
    let mut out = Vec::new();
    for (index, part) in text.split("```").enumerate() {
        if index % 2 == 1 {
            let (language, body) = part.split_once('\n').unwrap_or((part, ""));
            let checked = ["sql", "json", "toml", "promql"].contains(&language.trim());
            out.push((checked, body));
        } else {
            out.extend(
                part.split('`')
                    .skip(1)
                    .step_by(2)
                    .filter(|s| !s.is_empty())
                    .map(|s| (true, s)),
            );
        }
    }
    out
}

/// What follows the dot of a file name such as `wit/strategy.wit`, which is no setting.
const FILE_EXTENSIONS: [&str; 8] = ["rs", "wit", "md", "toml", "py", "json", "sql", "yml"];

/// Names the docs quote that belong to other software, with where they come from.
const FOREIGN_NAMES: [(&str, &str); 9] = [
    (
        "kil_switch",
        "the misspelt key configuration.md shows being refused",
    ),
    ("credentials_file", "Prometheus's scrape configuration"),
    ("finish_task_switch", "a Linux kernel symbol in a profile"),
    ("try_to_wake_up", "a Linux kernel symbol in a profile"),
    ("sqlite3_step", "a SQLite symbol in a profile"),
    ("futures_executor", "a crate in a profile"),
    ("wake_arc_raw", "a futures symbol in a profile"),
    ("lookup_vmdef", "a wasmtime symbol in a profile"),
    ("current_user", "PostgreSQL"),
];

/// `CamelCase` as `snake_case`: serde's `rename_all = "snake_case"` names of enum variants.
fn snake_of(word: &str) -> String {
    let mut out = String::new();
    for (i, c) in word.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The markdown files operators and authors read.
fn doc_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "runbooks"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A key or field name: lower case letters, digits and underscores, starting with a letter.
fn is_key(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_lowercase())
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A `snake_case` name: a key with at least one underscore between words.
fn is_snake_case(word: &str) -> bool {
    is_key(word) && word.contains('_') && !word.ends_with('_')
}

#[test]
fn every_setting_variable_and_field_the_docs_name_exists_in_the_code() {
    let root = repo_root();
    let mut code_dirs = vec![
        root.join("src"),
        root.join("tests"),
        root.join("kernel"),
        root.join("migrations"),
        root.join("wit"),
        root.join("plugins-example"),
        root.join("deploy"),
        root.join("crates"),
    ];
    code_dirs.sort();
    let mut words = code_words(
        &code_dirs,
        &[
            "rs", "sql", "wit", "py", "toml", "yml", "json", "html", "js",
        ],
    );
    // `scripts/*` have no extension.
    for entry in std::fs::read_dir(root.join("scripts")).unwrap() {
        words.extend(words_of(
            &std::fs::read_to_string(entry.unwrap().path()).unwrap(),
        ));
    }
    let camel: Vec<String> = words
        .iter()
        .filter(|w| w.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|w| snake_of(w))
        .collect();
    words.extend(camel);
    let variables = keel_host::config::env_variables();
    words.extend(variables.iter().map(|(var, _)| var.clone()));
    words.extend(FOREIGN_NAMES.iter().map(|(name, _)| (*name).to_owned()));
    let settings: HashSet<String> = variables
        .into_iter()
        .map(|(_, key)| key)
        .chain(["strategy.symbols", "strategy.config"].map(str::to_owned))
        .collect();
    let sections: HashSet<&str> = settings
        .iter()
        .map(|k| k.split_once('.').unwrap().0)
        .collect();

    let mut unknown = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        for (checked, span) in quoted(&text) {
            for token in span.split(|c: char| !(c.is_ascii_alphanumeric() || "_.".contains(c))) {
                let token = token.trim_matches('.');
                // A setting: `section.key`, the section one of the configuration's.
                if checked
                    && let Some((section, key)) = token.split_once('.')
                    && sections.contains(section)
                    && is_key(key)
                    && !FILE_EXTENSIONS.contains(&key)
                {
                    if !settings.contains(token) {
                        unknown.push(format!("{name}: setting `{token}`"));
                    }
                    continue;
                }
                for word in token.split('.') {
                    if words.contains(word) {
                        continue;
                    }
                    if word.starts_with("KEEL_") {
                        unknown.push(format!("{name}: variable `{word}`"));
                    } else if checked && is_snake_case(word) {
                        unknown.push(format!("{name}: name `{word}`"));
                    }
                }
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "the docs name what the code does not have:\n{}",
        unknown.join("\n")
    );
}

/// Every ```sql block of the runbooks runs on a freshly migrated PostgreSQL database (as the
/// owner role, `$1` a profile id): the tables and columns an operator is told to query exist.
#[tokio::test]
async fn every_runbook_query_runs_on_a_migrated_database() {
    let db = keel_testkit::store::PgTestDb::create().await;
    let mut failures = Vec::new();
    let mut queries = 0;
    for file in doc_files()
        .into_iter()
        .filter(|f| f.parent().is_some_and(|d| d.ends_with("runbooks")))
    {
        let text = std::fs::read_to_string(&file).unwrap();
        for block in text.split("```sql\n").skip(1) {
            let sql = block.split_once("```").expect("the block ends").0;
            let sql = sql.replace("$1", "'00000000-0000-0000-0000-000000000000'");
            queries += 1;
            if let Err(error) = sqlx::raw_sql(&sql).execute(&db.owner).await {
                failures.push(format!("{}: {error}\n{sql}", file.display()));
            }
        }
    }
    db.drop_db().await;
    assert!(queries >= 5, "{queries} SQL blocks found");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
