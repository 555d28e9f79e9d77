//! `POST /v1/cell-credentials` and `/v1/operator-credentials`: a cell or operator renews its
//! own credential.

use axum::extract::State;
use axum::response::Response;

use super::{blocking, created, Authenticated, S};
use crate::api;
use crate::ca::CaError;
use crate::http::problem::{ApiError, ApiJson};

pub(super) async fn own_credential(
    State(st): State<S>,
    Authenticated(role): Authenticated,
    uri: axum::http::Uri,
    ApiJson(req): ApiJson<api::CsrRequest>,
) -> Result<Response, ApiError> {
    let wanted = if uri.path().ends_with("cell-credentials") {
        "cell"
    } else {
        "operator"
    };
    if role.kind() != wanted {
        return Err(CaError::Forbidden(format!(
            "this endpoint requires the {wanted} role; the caller is a {}",
            role.kind()
        ))
        .into());
    }
    let ca = st.ca.clone();
    let issued = blocking(move || ca.renew_own_credential(&role, &req)).await?;
    Ok(created(&issued))
}
