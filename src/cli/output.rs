//! What commands print: JSON documents, the authority table, and `inspect`'s identity.

use std::path::Path;

use super::Failure;
use crate::api;
use crate::timefmt::rfc3339;
use crate::x509::inspect::{parse_pem_certs, CertInfo};

/// Prints `v` as pretty JSON on stdout.
pub(super) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    println!(
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
    println!("authority {} {what}: state {}", a.id, a.state);
    Ok(())
}

/// The readable table of `lanyard authority list`.
pub fn authority_table(r: &api::AuthoritiesResponse) -> String {
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
        let v = serde_json::json!({
            "instance": info.ou_value("app").and(info.common_name.clone()),
            "app": info.ou_value("app"),
            "space": info.ou_value("space"),
            "organization": info.ou_value("organization"),
            "spiffe_id": info.spiffe_id(),
            "certificate": info,
        });
        return print_json(&v);
    }
    let dash = |o: Option<&str>| o.unwrap_or("-").to_string();
    let instance = info.ou_value("app").and(info.common_name.as_deref());
    println!("instance:   {}", dash(instance));
    println!("app:        {}", dash(info.ou_value("app")));
    println!("space:      {}", dash(info.ou_value("space")));
    println!("org:        {}", dash(info.ou_value("organization")));
    println!("spiffe id:  {}", dash(info.spiffe_id()));
    println!("subject:    {}", info.subject);
    println!("issuer:     {}", info.issuer);
    println!("serial:     {}", info.serial);
    println!("not before: {}", rfc3339(info.not_before));
    println!("not after:  {}", rfc3339(info.not_after));
    if !info.dns_names.is_empty() {
        println!("dns:        {}", info.dns_names.join(", "));
    }
    if !info.ip_addresses.is_empty() {
        let ips: Vec<String> = info.ip_addresses.iter().map(|i| i.to_string()).collect();
        println!("ip:         {}", ips.join(", "));
    }
    println!("ca:         {}", info.is_ca);
    Ok(())
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
                root_not_after: "2026-01-01T00:00:00Z".into(),
                intermediate_not_after: "2025-03-01T00:00:00Z".into(),
                last_leaf_not_after: None,
                root_certificate: String::new(),
            }],
            trust_bundle_sequence: 3,
            schedule_lease: None,
        };
        let t = authority_table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  STATE   CREATED"), "{t}");
        assert!(
            lines[1].starts_with("g1  active  2025-01-01T00:00:00Z"),
            "{t}"
        );
        assert!(lines[1].ends_with('-'), "no leaf yet: {t}");
        assert_eq!(lines[2], "trust bundle sequence: 3");
    }
}
