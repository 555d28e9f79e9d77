//! `GET /v1/certificates` and `POST /v1/certificates/{serial}/revoke` (operators only).

use axum::extract::{RawQuery, State};
use axum::Json;

use super::{blocking, query_map, OperatorCaller, S};
use crate::api;
use crate::ca::{CaError, CertificateQuery};
use crate::http::problem::{ApiError, ApiPath, OptionalJson};
use crate::http::views::certificate_view;
use crate::ids::{Guid, Serial};

pub(super) async fn certificates(
    State(st): State<S>,
    _op: OperatorCaller,
    RawQuery(q): RawQuery,
) -> Result<Json<api::CertificatesResponse>, ApiError> {
    let m = query_map(q.as_deref())?;
    for k in m.keys() {
        if !["instance_guid", "app_guid", "limit"].contains(&k.as_str()) {
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
    let query = CertificateQuery {
        instance_guid: guid("instance_guid")?,
        app_guid: guid("app_guid")?,
        limit,
    };
    let ca = st.ca.clone();
    let records = blocking(move || ca.list_certificates(&query)).await?;
    Ok(Json(api::CertificatesResponse {
        certificates: records.iter().map(certificate_view).collect(),
    }))
}

pub(super) async fn revoke(
    State(st): State<S>,
    _op: OperatorCaller,
    ApiPath(serial): ApiPath,
    OptionalJson(body): OptionalJson<api::RevokeRequest>,
) -> Result<Json<api::CertificateView>, ApiError> {
    let serial: Serial = serial.parse().map_err(|e| CaError::invalid("serial", e))?;
    let ca = st.ca.clone();
    let rec = blocking(move || ca.revoke(&serial, body.reason)).await?;
    tracing::info!(serial = %rec.serial, "certificate revoked");
    Ok(Json(certificate_view(&rec)))
}
