//! Every answer the black-box tests receive is checked against the OpenAPI document the
//! server itself serves at `GET /v1/openapi.json`: the status must be documented for the
//! operation, the content type must be one the document names for that status, and a JSON
//! body must validate against its schema (JSON Schema 2020-12, formats included).
//!
//! The check is stricter than the document in one way: every object schema that does not say
//! otherwise is closed (`additionalProperties: false`), so a field the server sends but the
//! document does not describe fails the test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

/// The document, fetched once per test binary.
static DOCUMENT: OnceLock<Value> = OnceLock::new();

/// Compiled validators by schema text.
static VALIDATORS: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();

/// How many answers were checked.
static CHECKED: AtomicUsize = AtomicUsize::new(0);

/// How many answers this test binary has checked so far.
pub(crate) fn checked() -> usize {
    CHECKED.load(Ordering::Relaxed)
}

/// The document, fetched with `http` from the server at `base` the first time.
pub(crate) async fn document(http: &reqwest::Client, base: &str) -> &'static Value {
    if let Some(d) = DOCUMENT.get() {
        return d;
    }
    let resp = http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("fetching the OpenAPI document: {e}"));
    assert_eq!(resp.status(), 200, "GET /v1/openapi.json");
    let doc: Value = resp.json().await.expect("the OpenAPI document is JSON");
    DOCUMENT.get_or_init(|| doc)
}

/// The path template of the document that `path` (without its query) matches: literal
/// segments must be equal, `{param}` segments match any one segment. The template with the
/// fewest parameters wins.
pub(crate) fn template<'a>(doc: &'a Value, path: &str) -> Option<&'a str> {
    let segs: Vec<&str> = path.split('/').collect();
    doc["paths"]
        .as_object()?
        .keys()
        .filter(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segs.len()
                && ts.iter().zip(&segs).all(|(t, s)| {
                    (t.starts_with('{') && t.ends_with('}') && !s.is_empty()) || t == s
                })
        })
        .min_by_key(|t| t.matches('{').count())
        .map(String::as_str)
}

/// Closes every object schema that lists properties and says nothing of others.
fn closed(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out: serde_json::Map<String, Value> =
                m.iter().map(|(k, v)| (k.clone(), closed(v))).collect();
            if m.contains_key("properties") && !m.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(closed).collect()),
        other => other.clone(),
    }
}

fn validator(doc: &Value, schema: &Value) -> Arc<jsonschema::Validator> {
    let key = schema.to_string();
    let cache = VALIDATORS.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap().get(&key) {
        return v.clone();
    }
    // `#/components/...` references resolve against a root that carries the components.
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": closed(&doc["components"]),
    });
    for (k, v) in closed(schema).as_object().expect("a schema is an object") {
        root[k] = v.clone();
    }
    let v = Arc::new(
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("schema {schema} does not compile: {e}")),
    );
    cache.lock().unwrap().insert(key, v.clone());
    v
}

/// Validates `value` against `schema` (a schema of the document), panicking with every error.
pub(crate) fn validate(doc: &Value, schema: &Value, value: &Value, what: &str) {
    let v = validator(doc, schema);
    let errors: Vec<String> = v
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: the answer does not fit the OpenAPI document:\n{}\nanswer: {value}",
        errors.join("\n")
    );
}

/// Checks one answer: `method` and `path` (a query is ignored) as sent, the status, the
/// `Content-Type` and the body.
pub(crate) fn check(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    content_type: &str,
    body: &[u8],
) {
    let path = path.split('?').next().unwrap_or_default();
    let what = format!("{method} {path} -> {status}");
    let problem = json!({"$ref": "#/components/schemas/Problem"});
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json_body = || -> Value {
        serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "{what}: {content_type} body is not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        })
    };
    CHECKED.fetch_add(1, Ordering::Relaxed);
    let Some(t) = template(doc, path) else {
        // Not in the document: the router's fallback, a 404 problem.
        assert_eq!(
            status, 404,
            "{what}: the path is not in the OpenAPI document"
        );
        assert_eq!(media, "application/problem+json", "{what}");
        return validate(doc, &problem, &json_body(), &what);
    };
    let Some(op) = doc["paths"][t].get(method.to_ascii_lowercase()) else {
        // A documented path with another method: the router's 405 problem.
        assert_eq!(
            status, 405,
            "{what}: {method} {t} is not in the OpenAPI document"
        );
        assert_eq!(media, "application/problem+json", "{what}");
        return validate(doc, &problem, &json_body(), &what);
    };
    let what = format!("{method} {t} -> {status}");
    let responses = &op["responses"];
    let Some(resp) = responses.get(status.to_string()) else {
        let documented: Vec<&String> = responses.as_object().unwrap().keys().collect();
        panic!(
            "{what}: status {status} is not documented (only {documented:?}); body: {}",
            String::from_utf8_lossy(body)
        );
    };
    let Some(content) = resp.get("content").and_then(Value::as_object) else {
        assert!(
            body.is_empty(),
            "{what}: the document has no body here, the answer has {} bytes",
            body.len()
        );
        return;
    };
    let Some(mt) = content.get(&media) else {
        let documented: Vec<&String> = content.keys().collect();
        panic!("{what}: content type {content_type:?} is not documented (only {documented:?})");
    };
    if media == "application/json" || media.ends_with("+json") {
        if let Some(schema) = mt.get("schema") {
            validate(doc, schema, &json_body(), &what);
        }
    }
}
