//! The arrows of the layout (`lib.rs`), checked: a module that names a part it may not use
//! fails here, before a review has to notice.

use std::path::{Path, PathBuf};

/// The service's parts, bottom up; commands and tools may use any of them. (`accept` is a crate
/// of its own, which cannot name the service at all; the service re-exports it.)
const SERVICE: &[&str] = &[
    "domain",
    "config",
    "telemetry",
    "http_client",
    "broker",
    "store",
    "stripe",
    "budget",
    "ports",
    "rebuild",
    "intake",
    "worker",
    "push",
];

/// What each part of the service may use besides itself (and the ground floor's own rules).
fn allowed(part: &str) -> &'static [&'static str] {
    match part {
        "domain" | "http_client" => &[],
        "config" => &["domain"],
        "telemetry" => &["config"],
        "broker" | "store" => &["domain", "config", "telemetry"],
        "stripe" => &["domain", "config", "telemetry", "http_client"],
        "budget" => &["domain", "config", "telemetry", "store", "stripe"],
        "ports" => &["domain", "config", "telemetry", "broker", "store", "stripe"],
        "rebuild" => &["domain", "config", "telemetry", "store", "stripe", "ports"],
        "intake" => &[
            "domain",
            "config",
            "telemetry",
            "accept",
            "broker",
            "store",
            "stripe",
            "budget",
            "ports",
            "rebuild",
        ],
        "worker" => &[
            "domain",
            "config",
            "telemetry",
            "accept",
            "broker",
            "store",
            "stripe",
            "budget",
            "ports",
            "rebuild",
        ],
        "push" => &[
            "domain",
            "config",
            "telemetry",
            "accept",
            "http_client",
            "broker",
            "store",
        ],
        _ => &[],
    }
}

fn sources(part: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let file = root.join(format!("{part}.rs"));
    if file.is_file() {
        return vec![file];
    }
    let mut found = Vec::new();
    let mut folders = vec![root.join(part)];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    found
}

/// The top-level modules of the crate that `text` names as `crate::<module>`.
fn uses(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(at, found)| {
            text[at + found.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|module| !module.is_empty())
        .collect()
}

#[test]
fn no_part_of_the_service_uses_a_part_above_it_or_beside_it() {
    let mut wrong = Vec::new();
    for part in SERVICE {
        let files = sources(part);
        assert!(!files.is_empty(), "no sources for `{part}`");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("a readable source");
            for used in uses(&text) {
                if used != *part && !allowed(part).contains(&used.as_str()) {
                    wrong.push(format!("{}: crate::{used}", file.display()));
                }
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "arrows the layout forbids:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_an_arrow_that_runs_up() {
    assert_eq!(
        uses("use crate::intake::IntakeError;\nlet x = crate::domain::clock::now_millis();"),
        ["intake", "domain"]
    );
    assert!(!allowed("telemetry").contains(&"intake"));
    assert!(!allowed("worker").contains(&"intake"));
}
