//! Role extractors: the caller's verified role, checked again for every request.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::S;
use crate::ca::CaError;
use crate::http::problem::ApiError;
use crate::http::tls::{Caller, PeerIdentity};
use crate::ids::Role;

/// The verified role of the caller, checked again for this request, or 401.
pub(crate) struct Authenticated(pub Role);

impl FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &S) -> Result<Self, Self::Rejection> {
        let Some(caller) = parts.extensions.get::<Caller>().cloned() else {
            return Err(CaError::Unauthenticated(
                "this endpoint requires a client certificate issued by this CA".into(),
            )
            .into());
        };
        // Off the async runtime, on the bounded pool: the revocation lookup is a store call,
        // which may wait up to the store's call limit while the database is unreachable, and a
        // changed bundle re-verifies the chain.
        let ca = st.ca.clone();
        let identity = st.pool.run(move || caller.current_identity(&ca)).await?;
        match identity {
            PeerIdentity::Verified { role, .. } => Ok(Authenticated(role)),
            PeerIdentity::Untrusted(why) => Err(CaError::Unauthenticated(why).into()),
            PeerIdentity::Unavailable(why, _) => Err(CaError::NotReady(why).into()),
            PeerIdentity::Anonymous => Err(CaError::Unauthenticated(
                "this endpoint requires a client certificate issued by this CA".into(),
            )
            .into()),
        }
    }
}

macro_rules! role_extractor {
    ($name:ident, $variant:ident, $what:literal) => {
        #[doc = concat!("A caller with the ", $what, " role, or 401/403.")]
        pub(crate) struct $name(pub(crate) Role);

        impl FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                st: &S,
            ) -> Result<Self, Self::Rejection> {
                let Authenticated(role) = Authenticated::from_request_parts(parts, st).await?;
                match role {
                    Role::$variant(_) => Ok($name(role)),
                    other => Err(CaError::Forbidden(format!(
                        "this endpoint requires the {} role; the caller is a {}",
                        $what,
                        other.kind()
                    ))
                    .into()),
                }
            }
        }
    };
}

role_extractor!(CellCaller, Cell, "cell");
role_extractor!(OperatorCaller, Operator, "operator");
