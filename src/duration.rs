//! Lifetimes as people write them (`"15m"`, `"24h"`) and as the API carries them
//! (`ttl_seconds`), shared by the CLI and the agent.

use std::time::Duration;

use crate::api::JsonInt;

pub(crate) use crate::config::parse_duration;

/// A lifetime as the API's `ttl_seconds`.
pub(crate) fn ttl_seconds(d: Duration) -> JsonInt {
    (d.as_secs() as i64).into()
}

/// Parses a written lifetime (`"15m"`) into `ttl_seconds`.
pub(crate) fn parse_ttl(s: &str) -> Result<JsonInt, String> {
    parse_duration(s).map(ttl_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_lifetimes_become_seconds() {
        assert_eq!(parse_ttl("15m").unwrap(), JsonInt(900));
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), JsonInt(1));
        assert!(parse_ttl("soon").is_err());
    }
}
