//! Role extractors: the caller's verified role, checked again for every request; and the
//! bearer token of `Authorization`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

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
        // From memory when it can be (no hand-off to another thread); otherwise off the
        // async runtime, on the bounded pool: the revocation lookup is a store call, which may
        // wait up to the store's call limit while the database is unreachable, and a changed
        // bundle re-verifies the chain.
        let identity = match caller.identity_in_memory(&st.ca) {
            Some(known) => known,
            None => {
                let ca = st.ca.clone();
                st.pool.run(move || caller.current_identity(&ca)).await?
            }
        };
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
role_extractor!(ComponentCaller, Component, "component");

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched without
/// regard to case and may be followed by several spaces (RFC 9110, 11.1 and 11.4); `None`
/// without the header, with another scheme, or with an empty token.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim_start().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn the_bearer_scheme_matches_in_any_case_with_any_spacing() {
        for v in [
            "Bearer abc",
            "bearer abc",
            "BEARER abc",
            "bEaReR   abc ",
            "Bearer\tabc",
        ] {
            assert_eq!(bearer_token(&with(v)).as_deref(), Some("abc"), "{v:?}");
        }
    }

    #[test]
    fn another_scheme_an_empty_token_or_no_header_is_no_token() {
        for v in ["Basic abc", "Bearerabc", "Bearer", "Bearer   ", "Token abc"] {
            assert_eq!(bearer_token(&with(v)), None, "{v:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
