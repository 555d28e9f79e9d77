//! Holds docs/reference.md to the code: every HTTP route, every command with each of its
//! flags, and every configuration key must be documented there.

use crate::config::SERVER_KEYS;

const REFERENCE: &str = include_str!("../docs/reference.md");

/// The text of the section under `heading` (up to the next heading of any level).
fn section<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let start = text.find(&format!("\n{heading}\n"))? + heading.len() + 2;
    let rest = &text[start..];
    Some(&rest[..rest.find("\n#").unwrap_or(rest.len())])
}

#[test]
fn every_http_route_is_in_the_reference() {
    let routes = section(REFERENCE, "### Routes").expect("a Routes section");
    let missing: Vec<String> = crate::http::handlers::routes()
        .iter()
        .map(|r| format!("`{} {}", r.method, r.path))
        .filter(|row| !routes.contains(row.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from docs/reference.md: {missing:?}"
    );
}

/// Every command that runs (no subcommands of its own), by its path, with its long flags.
fn leaf_commands(cmd: &clap::Command, path: &str, out: &mut Vec<(String, Vec<String>)>) {
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands().filter(|c| c.get_name() != "help") {
            let p = format!("{path} {}", sub.get_name()).trim().to_string();
            leaf_commands(sub, &p, out);
        }
        return;
    }
    let flags = cmd
        .get_arguments()
        // Global options (propagated to every command) are documented once, not per command.
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(|l| format!("--{l}"))
        .collect();
    out.push((path.to_string(), flags));
}

#[test]
fn every_command_and_flag_is_in_the_reference() {
    let mut leaves = Vec::new();
    let mut cli = crate::cli::command();
    cli.build();
    leaf_commands(&cli, "", &mut leaves);
    assert!(leaves.len() > 10, "{leaves:?}");
    let mut missing = Vec::new();
    for (path, flags) in leaves {
        let heading = format!("### `lanyard {path}`");
        let Some(text) = section(REFERENCE, &heading) else {
            missing.push(heading);
            continue;
        };
        for flag in flags {
            if !text.contains(&format!("`{flag}")) {
                missing.push(format!("{flag} under {heading}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing from docs/reference.md: {missing:#?}"
    );
}

#[test]
fn every_configuration_key_is_in_the_reference() {
    let server = section(REFERENCE, "### Server keys").expect("a Server keys section");
    let agent = section(REFERENCE, "### Agent keys").expect("an Agent keys section");
    let mut missing = Vec::new();
    for (table, keys, name) in [
        (server, SERVER_KEYS, "server"),
        (agent, crate::agent::config::AGENT_KEYS, "agent"),
    ] {
        for (section, key) in keys {
            let dotted = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            // A row of the table: `| `key` | default | meaning |`.
            if !table.contains(&format!("| `{dotted}` |")) {
                missing.push(format!("{name} key {dotted}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing from docs/reference.md: {missing:?}"
    );
}

#[test]
fn the_reference_names_only_real_revocation_reasons() {
    for reason in crate::api::REVOCATION_REASONS {
        assert!(REFERENCE.contains(&format!("`{reason}`")), "{reason}");
        assert!(
            crate::x509::build::crl_reason(reason).is_some(),
            "{reason} has a CRL reason code"
        );
    }
}
