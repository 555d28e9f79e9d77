//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes and
//! the wire types of [`crate::api`], and served at `GET /v1/openapi.json`.
//!
//! Who may call an operation is written twice: as OpenAPI security (a `mutualTLS` scheme per
//! client-certificate role, HTTP bearer for a join token; none for public endpoints) and as
//! the extension `x-lanyard-role` (`cell`, `operator`, `cell-or-operator`, `component`, `join-token` or
//! `public`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    audit, authorities, certificates, components, credentials, crl, instances, join, ops,
    ownership, trust_bundle,
};
use crate::api;
use crate::config::IssuanceConfig;

/// Security scheme: a client certificate with the cell role.
pub(super) const CELL: &str = "cell_certificate";
/// Security scheme: a client certificate with the operator role.
pub(super) const OPERATOR: &str = "operator_certificate";
/// Security scheme: a client certificate of a system component.
pub(super) const COMPONENT: &str = "component_certificate";
/// Security scheme: a join token as a bearer token.
pub(super) const JOIN_TOKEN: &str = "join_token";

// The answers most operations share, written once. These types only document responses
// (`responses(..., BodyProblems, CallerProblems, ServerFailure)` in `#[utoipa::path]`); no
// handler constructs them, hence `dead_code` is allowed.

/// An operation that reads a JSON body: the body does not fit (400) or is too large (413).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum BodyProblems {
    /// 400.
    #[response(
        status = 400,
        description = "The body is not JSON or does not fit the schema (missing or unknown field, wrong type)",
        content_type = "application/problem+json"
    )]
    BadBody(api::Problem),
    /// 413.
    #[response(
        status = 413,
        description = "The body is over 1 MiB",
        content_type = "application/problem+json"
    )]
    TooLarge(api::Problem),
}

/// An operation for a role: no trusted client certificate (401), or another role (403).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum CallerProblems {
    /// 401.
    #[response(
        status = 401,
        description = "No client certificate, or one that is not (or no longer) trusted",
        content_type = "application/problem+json"
    )]
    Unauthenticated(api::Problem),
    /// 403.
    #[response(
        status = 403,
        description = "The caller's role may not use this operation",
        content_type = "application/problem+json"
    )]
    Forbidden(api::Problem),
}

/// Any operation that can fail inside the server (500; the details go to the log only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum ServerFailure {
    /// 500.
    #[response(
        status = 500,
        description = "The server failed; the details are in its log",
        content_type = "application/problem+json"
    )]
    Internal(api::Problem),
}

/// The OpenAPI document of the API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lanyard",
        description = "Instance-identity certificate authority. HTTPS only; client certificates \
            are optional at the TLS layer and required per operation. The caller's role comes \
            from its client certificate's URI SAN, and only a certificate that chains to this \
            CA's own bundle counts: `spiffe://<trust_domain>/lanyard/cell/<name>` is a cell, \
            `spiffe://<trust_domain>/lanyard/operator/<name>` an operator. Errors are \
            `application/problem+json`. An unknown path is a 404 and a known path with another \
            method a 405, both problem+json.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
        trust_bundle::trust_bundle,
        instances::instance_certificate,
        instances::instance_batch,
        components::component_certificate,
        components::component_credential,
        join::join_token,
        join::join,
        credentials::cell_credential,
        credentials::operator_credential,
        authorities::authorities,
        authorities::prepare,
        authorities::activate,
        authorities::retire,
        certificates::certificates,
        certificates::revoke,
        crl::crl,
        ownership::release,
        ownership::release_by_operator,
        audit::audit,
        ops::activity,
    ),
    components(schemas(
        api::Problem,
        api::IssuedCertificate,
        api::InstanceCertificateRequest,
        api::BatchRequest<api::InstanceCertificateRequest>,
        api::BatchResponse,
        api::BatchResult,
        api::ComponentCertificateRequest,
        api::ComponentCredentialRequest,
        api::CsrRequest,
        api::JoinTokenRequest,
        api::JoinTokenResponse,
        api::PrepareRequest,
        api::ForceRequest,
        api::RevokeRequest,
        api::AuthorityView,
        api::AuthoritiesResponse,
        api::ScheduleLease,
        api::ScheduledStep,
        api::CertificateView,
        api::CertificatesResponse,
        api::InstanceBindingView,
        api::AuditEntry,
        api::AuditResponse,
        api::SpiffeBundle,
        api::SpiffeKey,
        api::Health,
        api::Readiness,
        api::ActivityResponse,
        api::MinuteActivity,
        api::CellActivityView,
        api::ExpiringCertificate,
        api::WholeSeconds,
    )),
    modifiers(&SecuritySchemes, &OptionalBodies, &BusyAnswers),
)]
pub struct ApiDoc;

/// Adds the security schemes the operations refer to.
struct SecuritySchemes;

/// An optional body (`Option<T>` in `request_body`) is one that may be left out, not a JSON
/// `null`: its schema is `T`'s, and the body is not required.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{Schema, Type};
        use utoipa::openapi::RefOr;
        let is_null = |s: &RefOr<Schema>| {
            matches!(s, RefOr::T(Schema::Object(o))
                if o.schema_type == utoipa::openapi::schema::SchemaType::Type(Type::Null))
        };
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for body in ops
                .into_iter()
                .flatten()
                .filter_map(|o| o.request_body.as_mut())
            {
                for content in body.content.values_mut() {
                    if let Some(RefOr::T(Schema::OneOf(one))) = &content.schema {
                        let rest: Vec<_> = one.items.iter().filter(|s| !is_null(s)).collect();
                        if let [only] = rest[..] {
                            content.schema = Some(only.clone());
                        }
                    }
                }
            }
        }
    }
}

/// Any operation may be answered 503 with `Retry-After` when the server is busy: its
/// blocking work queue is full, or the connection found no room in its budget (anonymous
/// or authenticated). Added to every operation here rather than written on each.
struct BusyAnswers;

/// What a busy 503 means, as the document says it.
const BUSY: &str = "The server is busy (its work queue is full, or there are too many \
    connections of the caller's kind); retry after `Retry-After` seconds";

impl Modify for BusyAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                match op.responses.responses.get_mut("503") {
                    Some(RefOr::T(r)) => {
                        r.description = format!("{}; or: {BUSY}", r.description);
                    }
                    Some(RefOr::Ref(_)) => {}
                    None => {
                        let busy = ResponseBuilder::new()
                            .description(BUSY)
                            .header(
                                "Retry-After",
                                HeaderBuilder::new()
                                    .description(Some("Seconds to wait before retrying"))
                                    .build(),
                            )
                            .content(
                                crate::problem::PROBLEM_JSON,
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name("Problem")))
                                    .build(),
                            )
                            .build();
                        op.responses
                            .responses
                            .insert("503".to_string(), RefOr::T(busy));
                    }
                }
            }
        }
    }
}

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mtls = |role: &str| SecurityScheme::MutualTls {
            description: Some(format!(
                "A client certificate issued by this CA whose URI SAN is \
                 `spiffe://<trust_domain>/lanyard/{role}/<name>`."
            )),
            extensions: None,
        };
        components.add_security_scheme(CELL, mtls("cell"));
        components.add_security_scheme(OPERATOR, mtls("operator"));
        components.add_security_scheme(
            COMPONENT,
            SecurityScheme::MutualTls {
                description: Some(
                    "A component certificate issued by this CA whose URI SAN is \
                     `spiffe://<trust_domain>/component/<name>`."
                        .into(),
                ),
                extensions: None,
            },
        );
        components.add_security_scheme(
            JOIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A one-time join token from `POST /v1/join-tokens`: \
                         `Authorization: Bearer <token>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Where the document has a `ttl_seconds` that the CA checks against `issuance.min_ttl` and
/// `issuance.max_ttl` (the batch's items are a copy of the single request's schema).
const TTL_FIELDS: &[&str] = &[
    "/components/schemas/InstanceCertificateRequest/properties/ttl_seconds",
    "/components/schemas/BatchRequest_InstanceCertificateRequest/properties/requests/items/properties/ttl_seconds",
    "/components/schemas/ComponentCertificateRequest/properties/ttl_seconds",
    "/components/schemas/ComponentCredentialRequest/properties/ttl_seconds",
];

/// The document as this server serves it: the generated one, with the limits that come from
/// its configuration written in (the range of `ttl_seconds` is the configured minimum and
/// maximum TTL, in whole seconds, as the CA checks it), so a client generating requests from
/// the document gets the server's actual rules.
///
/// Names the CA keeps for itself (`reserved`, and any ending in `.localhost`) are excluded
/// from component names and internal routes.
pub(super) fn served_document(issuance: &IssuanceConfig, reserved: &[String]) -> String {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(v) => v,
        // Serializing a tree of strings, maps and numbers cannot fail; an empty object is
        // still valid JSON if it ever did.
        Err(_) => return "{}".to_string(),
    };
    let (min, max) = (issuance.min_ttl.0.as_secs(), issuance.max_ttl.0.as_secs());
    for field in TTL_FIELDS {
        if let Some(ttl) = doc.pointer_mut(field).and_then(|v| v.as_object_mut()) {
            ttl.insert("minimum".into(), min.into());
            ttl.insert("maximum".into(), max.into());
        }
    }
    if let Some(ip) = doc
        .pointer_mut("/components/schemas/IpAddress")
        .and_then(|v| v.as_object_mut())
    {
        ip.insert("not".into(), refused_ips(issuance.allow_loopback_ips));
    }
    let not_reserved = serde_json::json!({"anyOf": [
        {"enum": reserved},
        {"pattern": format!("{}$", regex_escape(crate::ca::RESERVED_SUFFIX))},
    ]});
    if let Some(route) = doc
        .pointer_mut("/components/schemas/RouteName")
        .and_then(|v| v.as_object_mut())
    {
        route.insert("not".into(), not_reserved.clone());
    }
    if let Some(name) =
        doc.pointer_mut("/components/schemas/ComponentCertificateRequest/properties/name")
    {
        let description = name.get("description").cloned();
        *name = serde_json::json!({
            "allOf": [{"$ref": "#/components/schemas/DnsName"}],
            "not": not_reserved,
            "description": description,
        });
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_string())
}

/// `text` as a regular expression that matches exactly it.
fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = "\\.^$|?*+()[]{}".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// The addresses a certificate may not name, as patterns over the address text (every
/// spelling of one address): unspecified and multicast, and loopback unless
/// `issuance.allow_loopback_ips`. A container never owns these.
fn refused_ips(allow_loopback: bool) -> serde_json::Value {
    let mut patterns = vec![
        // IPv4 0.0.0.0, and 224.0.0.0/4 (multicast).
        r"^0\.0\.0\.0$",
        r"^2(2[4-9]|3[0-9])\.",
        // IPv6 `::` (every group zero, however written, also with an IPv4 tail of zeros).
        r"^[0:]+$",
        r"^[0:]*:(0{1,3}\.){3}0{1,3}$",
        // IPv6 ff00::/8 (multicast).
        r"^[fF]{2}[0-9a-fA-F]{2}:",
    ];
    if !allow_loopback {
        patterns.extend([
            // IPv4 127.0.0.0/8; IPv6 `::1`, however written.
            r"^127\.",
            r"^[0:]*:0{0,3}1$",
            r"^[0:]*:(0{1,3}\.){3}0{0,2}1$",
        ]);
    }
    serde_json::json!({
        "anyOf": patterns
            .into_iter()
            .map(|p| serde_json::json!({ "pattern": p }))
            .collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;
    use crate::http::handlers::routes;
    use crate::problem::PROBLEM_JSON;

    fn document() -> Value {
        serde_json::from_str(&served_document(
            &IssuanceConfig::default(),
            &["localhost".into(), "lanyard-server".into()],
        ))
        .expect("the document is JSON")
    }

    fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    ops.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        ops
    }

    #[test]
    fn the_document_has_every_route_of_the_router_and_no_other() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let served: BTreeSet<(String, String)> = routes()
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_string()))
            .collect();
        assert_eq!(served.len(), routes().len(), "a route is listed twice");
        assert_eq!(operations(&doc), served);
    }

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut found = vec![];
        refs(&doc, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for r in found {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{r} is external"));
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn every_operation_says_who_may_call_it() {
        let doc = document();
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(schemes[CELL]["type"], "mutualTLS");
        assert_eq!(schemes[OPERATOR]["type"], "mutualTLS");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let role = op["x-lanyard-role"].as_str();
                let security: Vec<&String> = op["security"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .flat_map(|s| s.as_object().unwrap().keys())
                            .collect()
                    })
                    .unwrap_or_default();
                let expected: Vec<&str> = match role {
                    Some("public") => vec![],
                    Some("cell") => vec![CELL],
                    Some("operator") => vec![OPERATOR],
                    Some("cell-or-operator") => vec![CELL, OPERATOR],
                    Some("component") => vec![COMPONENT],
                    Some("join-token") => vec![JOIN_TOKEN],
                    other => panic!("{method} {path}: role {other:?}"),
                };
                assert_eq!(security, expected, "{method} {path}");
                for s in security {
                    assert!(schemes.contains_key(s), "{s}");
                }
            }
        }
    }

    #[test]
    fn every_error_status_is_a_problem_and_every_operation_has_an_id() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["operationId"].is_string(), "{method} {path}");
                for (status, resp) in op["responses"].as_object().unwrap() {
                    let code: u16 = status.parse().unwrap();
                    if code >= 400 {
                        assert_eq!(
                            resp["content"][PROBLEM_JSON]["schema"]["$ref"],
                            "#/components/schemas/Problem",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn request_schemas_refuse_unknown_fields_and_keep_serde_names() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "InstanceCertificateRequest",
            "ComponentCertificateRequest",
            "ComponentCredentialRequest",
            "CsrRequest",
            "JoinTokenRequest",
            "ForceRequest",
            "RevokeRequest",
            "PrepareRequest",
        ] {
            assert_eq!(
                schemas[name]["additionalProperties"],
                Value::Bool(false),
                "{name}"
            );
        }
        assert!(schemas["Problem"]["properties"]["type"].is_object());
        assert!(schemas["SpiffeKey"]["properties"]["use"].is_object());
        let view = &schemas["CertificateView"];
        assert!(view["properties"]["revocation_reason"].is_object());
        let required = view["required"].as_array().unwrap();
        assert!(required.contains(&"revoked_at".into()));
        assert!(!required.contains(&"revocation_reason".into()));
    }

    #[test]
    fn every_ttl_seconds_carries_the_configured_range() {
        let doc = document();
        let i = IssuanceConfig::default();
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            text.matches("\"ttl_seconds\"").count(),
            TTL_FIELDS.len() + 1
        );
        for field in TTL_FIELDS {
            let ttl = doc.pointer(field).unwrap_or_else(|| panic!("{field}"));
            assert_eq!(ttl["minimum"], i.min_ttl.0.as_secs(), "{field}");
            assert_eq!(ttl["maximum"], i.max_ttl.0.as_secs(), "{field}");
        }
    }

    #[test]
    fn the_documented_ip_rule_refuses_exactly_what_issuance_refuses() {
        let samples = [
            "10.255.4.7",
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "224.0.0.1",
            "239.255.255.255",
            "223.255.255.255",
            "240.0.0.1",
            "::",
            "0::0",
            "0:0:0:0:0:0:0:0",
            "::0.0.0.0",
            "::1",
            "0:0:0:0:0:0:0:1",
            "::0001",
            "::0.0.0.1",
            "::2",
            "ff02::1",
            "FF0E::",
            "ff::1",
            "ff0::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
        ];
        for allow_loopback in [false, true] {
            let v = jsonschema::validator_for(&serde_json::json!({
                "not": refused_ips(allow_loopback)
            }))
            .unwrap();
            for text in samples {
                let ip: std::net::IpAddr = text.parse().unwrap();
                let refused = (ip.is_loopback() && !allow_loopback)
                    || ip.is_unspecified()
                    || ip.is_multicast();
                assert_eq!(
                    v.is_valid(&Value::String(text.into())),
                    !refused,
                    "{text} (allow_loopback {allow_loopback})"
                );
            }
        }
    }

    #[test]
    fn component_names_and_routes_exclude_the_reserved_names() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for not in [
            &schemas["ComponentCertificateRequest"]["properties"]["name"]["not"],
            &schemas["RouteName"]["not"],
        ] {
            let v = jsonschema::validator_for(&serde_json::json!({ "not": not })).unwrap();
            for reserved in ["localhost", "lanyard-server", "a.localhost"] {
                assert!(!v.is_valid(&Value::String(reserved.into())), "{reserved}");
            }
            for free in ["billing.apps.internal", "localhostx", "localhost.example"] {
                assert!(v.is_valid(&Value::String(free.into())), "{free}");
            }
        }
    }

    #[test]
    fn an_optional_body_may_be_left_out_but_is_never_null() {
        let doc = document();
        let body = &doc["paths"]["/v1/authorities/{id}/activate"]["post"]["requestBody"];
        assert_ne!(body["required"], true);
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ForceRequest"
        );
        let body = &doc["paths"]["/v1/join"]["post"]["requestBody"];
        assert_eq!(body["required"], true);
    }
}
