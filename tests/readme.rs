//! README.md's own snippets, taken from README.md: the walkthrough runs as written against a
//! real server, and every `lanyard` command line in its shell blocks parses.

mod common;

use std::path::Path;
use std::process::Command;

use common::{TestCa, BIN};

const README: &str = include_str!("../README.md");

/// The fenced block that follows `<!-- test: NAME -->` in `text`.
fn snippet(text: &str, name: &str) -> String {
    let marker = format!("<!-- test: {name} -->");
    let after = text
        .split_once(&marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"))
        .1;
    let body = after
        .split_once("```sh\n")
        .expect("a ```sh block after the marker")
        .1;
    body.split_once("\n```")
        .expect("the block ends")
        .0
        .to_string()
}

/// Every fenced shell block of `text`.
fn shell_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((_, after)) = rest.split_once("```sh\n") {
        let (block, next) = after.split_once("\n```").expect("the block ends");
        out.push(block.to_string());
        rest = next;
    }
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_runs_as_written_against_a_real_server() {
    let ca = TestCa::start();
    // The only change: the port of the server this test started, in place of the dev 8443.
    let script =
        snippet(README, "walkthrough").replace("localhost:8443", &format!("localhost:{}", ca.port));
    let before = files_in(ca.dir.path());
    // As a user runs it: the installed `lanyard` on PATH, from a directory holding the dev
    // config's state (`data/`), with that config found through LANYARD_CONFIG.
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(ca.dir.path())
        .env("PATH", path)
        .env("LANYARD_CONFIG", &ca.config)
        .env_remove("LANYARD_KEK")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}\n---\n{text}");
    assert!(text.contains("instance.crt: OK"), "{text}");
    assert!(
        text.contains("instance:   9a1c2f3e-5b6d-4e7f-8a9b-0c1d"),
        "{text}"
    );
    assert_eq!(
        files_in(ca.dir.path()),
        before,
        "the walkthrough writes its files into a temporary directory only"
    );
}

/// Splits a shell line into words (quotes kept simple: README lines use none inside them).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace()
        .take_while(|w| !w.starts_with('#') && !matches!(*w, "|" | ">" | "&&" | ";"))
        .map(|w| w.trim_matches(['"', '\'']).to_string())
        .collect()
}

#[test]
fn every_lanyard_command_line_in_the_readme_parses() {
    let mut checked = 0;
    for block in shell_blocks(README) {
        for line in block.lines() {
            // `lanyard ...` at the start of a line, or after `$(`, `&&` or `=`.
            for (i, _) in line.match_indices("lanyard ") {
                let before = line[..i].trim_end();
                let starts = before.is_empty()
                    || before.ends_with("$(")
                    || before.ends_with("&&")
                    || before.ends_with('=');
                if !starts {
                    continue;
                }
                let mut argv = words(&line[i..].replace(')', " "));
                // Shell variables stand for values.
                for w in &mut argv {
                    if w.starts_with('$') {
                        *w = "x".into();
                    }
                }
                // `--version` and `--help` "fail" to parse by printing instead: that is fine.
                if let Err(e) = lanyard::cli::command().try_get_matches_from(&argv) {
                    assert!(!e.use_stderr(), "README: `{line}` does not parse: {e}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} command lines found");
}

#[test]
fn the_readme_and_docs_never_point_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts = vec![("README.md".to_string(), README.to_string())];
    for dir in ["docs", "ca-config", "contrib/systemd"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            // Pictures (docs/console.png) hold no links.
            if p.extension().is_some_and(|x| x == "png") {
                continue;
            }
            texts.push((
                p.strip_prefix(root).unwrap().display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
    for (name, text) in texts {
        for bad in [
            "../shared",
            "shared/docs",
            "contract.md",
            "contract section",
        ] {
            assert!(!text.contains(bad), "{name} mentions {bad}");
        }
        // Relative links resolve inside the repository.
        for (i, _) in text.match_indices("](") {
            let target = text[i + 2..].split(')').next().unwrap();
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let base = root.join(&name);
            let resolved = base.parent().unwrap().join(file);
            assert!(
                resolved.exists(),
                "{name} links to {target}, which is not in the repository"
            );
        }
    }
}
