//! What commands print: JSON documents, the authority table, and `inspect`'s identity.

use std::path::Path;

use super::Failure;
use crate::api;
use crate::timefmt::rfc3339;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// Writes command output to stdout. When its reader is gone (`lanyard ... | head`), the
/// command ends quietly with status 0, as other Unix tools do, instead of `println!`'s panic:
/// nobody is left to read the rest.
pub(super) fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("lanyard: error: cannot write the output: {e}");
            std::process::exit(1)
        }
    }
}

/// `println!` for command output, through [`write_stdout`].
macro_rules! outln {
    () => {
        $crate::cli::output::write_stdout(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` for command output, through [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!($($arg)*), false)
    };
}
pub(super) use {out, outln};

/// Prints `v` as pretty JSON on stdout.
pub(super) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).map_err(Failure::runtime)?
    );
    Ok(())
}

/// One generation after a rotation step: JSON, or one readable line.
pub(super) fn show_authority(
    a: &api::AuthorityView,
    json: bool,
    what: &str,
) -> Result<(), Failure> {
    if json {
        return print_json(a);
    }
    outln!("authority {} {what}: state {}", a.id, a.state);
    Ok(())
}

/// When `at` (RFC 3339) comes, relative to `now`: `in 9m12s`, or `now` once it has passed.
fn from_now(at: &str, now: std::time::SystemTime) -> String {
    match crate::timefmt::parse_rfc3339(at).map(|t| t.duration_since(now)) {
        Some(Ok(left)) if left.as_secs() > 0 => {
            let s = left.as_secs();
            let (d, h, m, s) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60, s % 60);
            let text = match (d, h, m) {
                (0, 0, 0) => format!("{s}s"),
                (0, 0, _) => format!("{m}m{s:02}s"),
                (0, _, _) => format!("{h}h{m:02}m"),
                _ => format!("{d}d{h:02}h"),
            };
            format!("in {text}")
        }
        Some(_) => "now".into(),
        None => "?".into(),
    }
}

/// The readable table of `lanyard authority list`, then when a prepared generation may be
/// activated, the next step the server takes by itself, and the bundle sequence.
pub fn authority_table(r: &api::AuthoritiesResponse) -> String {
    authority_table_at(r, std::time::SystemTime::now())
}

fn authority_table_at(r: &api::AuthoritiesResponse, now: std::time::SystemTime) -> String {
    let day = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let mut rows = vec![[
        "ID".to_string(),
        "STATE".into(),
        "CREATED".into(),
        "ACTIVATED".into(),
        "ROOT EXPIRES".into(),
        "LAST LEAF EXPIRES".into(),
    ]];
    for a in &r.authorities {
        rows.push([
            a.id.clone(),
            a.state.clone(),
            a.created_at.clone(),
            day(&a.activated_at),
            a.root_not_after.clone(),
            day(&a.last_leaf_not_after),
        ]);
    }
    let mut widths = [0usize; 6];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for a in &r.authorities {
        if let Some(at) = &a.activatable_at {
            let when = match from_now(at, now).as_str() {
                "now" => format!("now (published for the propagation delay since {at})"),
                rel => format!("from {at} ({rel}; earlier with --force)"),
            };
            out.push_str(&format!("authority {} may be activated {when}\n", a.id));
        }
    }
    match &r.next_automatic_step {
        Some(s) => out.push_str(&format!(
            "next automatic step: {} authority {} at {} ({}): {}\n",
            s.action,
            s.authority_id,
            s.due_at,
            from_now(&s.due_at, now),
            s.reason
        )),
        None => out.push_str("next automatic step: none scheduled\n"),
    }
    out.push_str(&format!(
        "trust bundle sequence: {}\n",
        r.trust_bundle_sequence
    ));
    out
}

/// `lanyard inspect`: the identity in a certificate file.
pub(super) fn inspect(file: &Path, json: bool) -> Result<(), Failure> {
    let text =
        std::fs::read(file).map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?;
    // PEM (the first certificate of a chain), or a single DER certificate.
    let der = match parse_pem_certs(&text) {
        Ok(mut certs) => certs.remove(0),
        Err(_) if CertInfo::from_der(&text).is_ok() => text,
        Err(e) => return Err(Failure::runtime(format!("{}: {e}", file.display()))),
    };
    let info = CertInfo::from_der(&der)
        .map_err(|e| Failure::runtime(format!("{}: {e}", file.display())))?;
    if json {
        return print_json(&inspect_json(&info));
    }
    let dash = |o: Option<&str>| o.unwrap_or("-").to_string();
    let instance = info.ou_value("app").and(info.common_name.as_deref());
    outln!("instance:   {}", dash(instance));
    outln!("app:        {}", dash(info.ou_value("app")));
    outln!("space:      {}", dash(info.ou_value("space")));
    outln!("org:        {}", dash(info.ou_value("organization")));
    outln!("spiffe id:  {}", dash(info.spiffe_id()));
    outln!("subject:    {}", info.subject);
    outln!("issuer:     {}", info.issuer);
    outln!("serial:     {}", info.serial);
    outln!("not before: {}", rfc3339(info.not_before));
    outln!("not after:  {}", rfc3339(info.not_after));
    if !info.dns_names.is_empty() {
        outln!("dns:        {}", info.dns_names.join(", "));
    }
    if !info.ip_addresses.is_empty() {
        let ips: Vec<String> = info.ip_addresses.iter().map(|i| i.to_string()).collect();
        outln!("ip:         {}", ips.join(", "));
    }
    outln!("ca:         {}", info.is_ca);
    Ok(())
}

/// `inspect --json`: the API's field names (those of a certificate record and an issued
/// certificate) for what they share, then what only the certificate itself says.
fn inspect_json(info: &CertInfo) -> serde_json::Value {
    let instance = info.ou_value("app").and(info.common_name.clone());
    serde_json::json!({
        "serial": info.serial,
        "instance_guid": instance,
        "app_guid": info.ou_value("app"),
        "space_guid": info.ou_value("space"),
        "organization_guid": info.ou_value("organization"),
        // Cells, operators, components and servers: their name is the common name.
        "name": if instance.is_none() { info.common_name.clone() } else { None },
        "spiffe_id": info.spiffe_id(),
        "not_before": rfc3339(info.not_before),
        "not_after": rfc3339(info.not_after),
        "subject": info.subject,
        "issuer": info.issuer,
        "dns_names": info.dns_names,
        "ip_addresses": info.ip_addresses,
        "uris": info.uris,
        "is_ca": info.is_ca,
        "authority_key_id": info.authority_key_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_table_aligns_columns_and_ends_with_the_sequence() {
        let r = api::AuthoritiesResponse {
            authorities: vec![api::AuthorityView {
                id: "g1".into(),
                state: "active".into(),
                created_at: "2025-01-01T00:00:00Z".into(),
                published_at: None,
                activated_at: Some("2025-01-01T00:00:00Z".into()),
                retiring_at: None,
                retired_at: None,
                root_not_before: "2025-01-01T00:00:00Z".into(),
                root_not_after: "2026-01-01T00:00:00Z".into(),
                intermediate_not_before: "2025-01-30T00:00:00Z".into(),
                intermediate_not_after: "2025-03-01T00:00:00Z".into(),
                last_leaf_not_after: None,
                root_certificate: String::new(),
                activatable_at: None,
            }],
            trust_bundle_sequence: 3,
            schedule_lease: None,
            next_automatic_step: None,
        };
        let t = authority_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  STATE   CREATED"), "{t}");
        assert!(
            lines[1].starts_with("g1  active  2025-01-01T00:00:00Z"),
            "{t}"
        );
        assert!(lines[1].ends_with('-'), "no leaf yet: {t}");
        assert_eq!(lines[2], "next automatic step: none scheduled");
        assert_eq!(lines[3], "trust bundle sequence: 3");
    }

    #[test]
    fn the_authority_table_says_when_a_prepared_generation_may_be_activated_and_what_is_next() {
        let view = |id: &str, state: &str, activatable_at: Option<&str>| api::AuthorityView {
            id: id.into(),
            state: state.into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            published_at: None,
            activated_at: None,
            retiring_at: None,
            retired_at: None,
            root_not_before: "2025-01-01T00:00:00Z".into(),
            root_not_after: "2026-01-01T00:00:00Z".into(),
            intermediate_not_before: "2025-01-30T00:00:00Z".into(),
            intermediate_not_after: "2025-03-01T00:00:00Z".into(),
            last_leaf_not_after: None,
            root_certificate: String::new(),
            activatable_at: activatable_at.map(Into::into),
        };
        let r = api::AuthoritiesResponse {
            authorities: vec![
                view("1", "active", None),
                view("2", "prepared", Some("2025-06-01T00:10:00Z")),
            ],
            trust_bundle_sequence: 4,
            schedule_lease: None,
            next_automatic_step: Some(api::ScheduledStep {
                action: "activate".into(),
                authority_id: "2".into(),
                due_at: "2025-06-01T00:10:00Z".into(),
                reason: "published for the propagation delay (10m00s)".into(),
            }),
        };
        let now = crate::timefmt::parse_rfc3339("2025-06-01T00:00:30Z").unwrap();
        let t = authority_table_at(&r, now);
        assert!(
            t.contains("authority 2 may be activated from 2025-06-01T00:10:00Z (in 9m30s; earlier with --force)"),
            "{t}"
        );
        assert!(
            t.contains("next automatic step: activate authority 2 at 2025-06-01T00:10:00Z (in 9m30s): published for the propagation delay"),
            "{t}"
        );
        let later = crate::timefmt::parse_rfc3339("2025-06-01T00:11:00Z").unwrap();
        assert!(authority_table_at(&r, later).contains("authority 2 may be activated now"));
    }

    #[test]
    fn inspect_json_uses_the_api_field_names() {
        let ca = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["9a1c".to_string()]).unwrap();
        // rcgen keeps one value per attribute type: the app's OU is the one that makes an
        // instance certificate.
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, "app:6f1e");
        p.distinguished_name.push(rcgen::DnType::CommonName, "9a1c");
        let cert = p.self_signed(&ca).unwrap();
        let info = CertInfo::from_der(cert.der()).unwrap();
        let v = inspect_json(&info);
        assert_eq!(v["instance_guid"], "9a1c");
        assert_eq!(v["app_guid"], "6f1e");
        assert!(v["name"].is_null());
        for key in [
            "serial",
            "space_guid",
            "organization_guid",
            "not_before",
            "not_after",
            "spiffe_id",
        ] {
            assert!(v.get(key).is_some(), "{key} in {v}");
        }
    }
}
