//! `GET /v1/certificates` and `POST /v1/certificates/{serial}/revoke` (operators only).

use axum::extract::{RawQuery, State};
use axum::Json;

use super::openapi::{BodyProblems, CallerProblems, ServerFailure};
use super::{blocking, paths, query_map, OperatorCaller, S};
use crate::api;
use crate::ca::{CaError, CertificateCursor, CertificateQuery};
use crate::http::problem::{ApiError, ApiPath, OptionalJson};
use crate::http::views::certificate_view;
use crate::ids::{Guid, Serial};

#[utoipa::path(
    get,
    path = paths::CERTIFICATES,
    tag = "certificates",
    summary = "Issued certificate records, newest first, a page at a time",
    description = "Records matching every filter given, newest (latest notBefore) first, at most `limit`. When more match, the answer's `next` is the `after` of the next page; paging on with it visits every matching record once, even while new ones are issued (those come before the first page). `serial` looks one record up.",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    params(
        ("instance_guid" = Option<String>, Query, nullable = false, pattern = "^[0-9a-f]([0-9a-f-]{0,61}[0-9a-f])?$", description = "Only this instance's certificates (a GUID)"),
        ("app_guid" = Option<String>, Query, nullable = false, pattern = "^[0-9a-f]([0-9a-f-]{0,61}[0-9a-f])?$", description = "Only this app's certificates (a GUID)"),
        ("serial" = Option<String>, Query, nullable = false, pattern = "^(0x)?([0-9a-fA-F]{2}:?){15}[0-9a-fA-F]{2}$", description = "Only the certificate with this serial (16 bytes of hex, either letter case, optionally after `0x` and with `:` between bytes): an empty list when there is none"),
        ("after" = Option<String>, Query, nullable = false, pattern = "^[0-9a-f]{56}$", description = "The `next` of the previous page: only records after it"),
        ("limit" = Option<u32>, Query, nullable = false, minimum = 1, maximum = 1000, description = "At most this many records (default 100)"),
    ),
    responses(
        (status = 200, description = "The records, and `next` when more match",
            body = api::CertificatesResponse, content_type = "application/json"),
        (status = 400, description = "An unknown query parameter, or one given twice",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A well-formed but invalid value: `instance_guid`, `app_guid`, `serial`, `after` or `limit`; `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds (here or on another replica)",
            body = api::Problem, content_type = "application/problem+json"),
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn certificates(
    State(st): State<S>,
    _op: OperatorCaller,
    RawQuery(q): RawQuery,
) -> Result<Json<api::CertificatesResponse>, ApiError> {
    let m = query_map(q.as_deref())?;
    for k in m.keys() {
        if !["instance_guid", "app_guid", "serial", "after", "limit"].contains(&k.as_str()) {
            return Err(CaError::BadRequest(format!("unknown query parameter `{k}`")).into());
        }
    }
    let guid = |k: &str| -> Result<Option<Guid>, CaError> {
        m.get(k)
            .map(|v| v.parse().map_err(|e| CaError::invalid(k, e)))
            .transpose()
    };
    let limit = match m.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                CaError::invalid("limit", format!("`{v}` is not a number from 1 to 1000"))
            })?,
    };
    let serial = m.get("serial").map(|v| serial_param(v)).transpose()?;
    let after = m
        .get("after")
        .map(|v| CertificateCursor::parse(v).map_err(|e| CaError::invalid("after", e)))
        .transpose()?;
    let query = CertificateQuery {
        instance_guid: guid("instance_guid")?,
        app_guid: guid("app_guid")?,
        serial,
        after,
        limit,
    };
    let ca = st.ca.clone();
    let page = blocking(&st, move || ca.list_certificates(&query)).await?;
    Ok(Json(api::CertificatesResponse {
        certificates: page.records.iter().map(certificate_view).collect(),
        next: page.next.map(|c| c.encode()),
    }))
}

#[utoipa::path(
    post,
    path = paths::REVOKE,
    tag = "certificates",
    summary = "Revoke a certificate",
    security(("operator_certificate" = [])),
    extensions(("x-lanyard-role" = json!("operator"))),
    params(("serial" = String, Path, pattern = "^(0x)?([0-9a-fA-F]{2}:?){15}[0-9a-fA-F]{2}$", description = "The serial: 16 bytes of hex (either letter case), optionally after `0x` and with `:` between bytes")),
    request_body(content = Option<api::RevokeRequest>, content_type = "application/json", description = "Empty, `{}`, or `{\"reason\": \"...\"}`"),
    responses(
        (status = 200, description = "The revoked record; revoking an already revoked certificate (a retry) answers it as it is, with its first `revoked_at`",
            body = api::CertificateView, content_type = "application/json"),
        (status = 404, description = "No such certificate",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The certificate is the CA's own TLS server certificate or the local operator credential; `detail` says why and what to do instead",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A well-formed but invalid value: `serial` is not 16 bytes of hex; `detail` names the field",
            body = api::Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unreachable; retry after `Retry-After` seconds (here or on another replica)",
            body = api::Problem, content_type = "application/problem+json"),
        BodyProblems,
        CallerProblems,
        ServerFailure,
    ),
)]
pub(super) async fn revoke(
    State(st): State<S>,
    OperatorCaller(role): OperatorCaller,
    ApiPath(serial): ApiPath,
    OptionalJson(body): OptionalJson<api::RevokeRequest>,
) -> Result<Json<api::CertificateView>, ApiError> {
    let serial = serial_param(&serial)?;
    let ca = st.ca.clone();
    let rec = blocking(&st, move || ca.revoke(&role, &serial, body.reason)).await?;
    tracing::info!(serial = %rec.serial, "certificate revoked");
    Ok(Json(certificate_view(&rec)))
}

/// A serial as the API takes it, in the form the document gives
/// (`^(0x)?([0-9a-fA-F]{2}:?){15}[0-9a-fA-F]{2}$`): 16 bytes of hex in either letter case,
/// optionally after `0x`, with at most one `:` between two bytes. Anything else is a 422
/// naming `serial`.
fn serial_param(text: &str) -> Result<Serial, CaError> {
    let b = text.strip_prefix("0x").unwrap_or(text).as_bytes();
    let (mut i, mut bytes) = (0, 0);
    let mut documented = true;
    while documented && i < b.len() {
        documented = b
            .get(i..i + 2)
            .is_some_and(|p| p.iter().all(u8::is_ascii_hexdigit));
        i += 2;
        bytes += 1;
        if b.get(i) == Some(&b':') {
            i += 1;
            documented &= i < b.len();
        }
    }
    if !documented || bytes != 16 {
        return Err(CaError::invalid(
            "serial",
            "must be 16 bytes of hex (32 digits), optionally after `0x` and with `:` between bytes",
        ));
    }
    text.parse().map_err(|e| CaError::invalid("serial", e))
}

#[cfg(test)]
mod tests {
    use super::serial_param;

    #[test]
    fn a_serial_is_taken_in_the_documented_forms_only() {
        let hex = "00112233445566778899aabbccddeeff";
        let colons = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
        for good in [
            hex.to_string(),
            hex.to_uppercase(),
            format!("0x{hex}"),
            colons.into(),
        ] {
            assert_eq!(serial_param(&good).unwrap().to_string(), hex, "{good}");
        }
        for bad in [
            "",
            "0",
            "0x",
            &hex[1..],
            &format!("{hex}00"),
            &format!(":{hex}"),
            &format!("{hex}:"),
            "00::11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff",
            "0:0112233445566778899aabbccddeeff",
            &hex.replace('0', "g"),
        ] {
            assert!(serial_param(bad).is_err(), "{bad}");
        }
    }
}
