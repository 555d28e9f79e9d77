//! Renewal timing: renew at a fraction of a certificate's life, spread by jitter, and back
//! off exponentially after failures.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{lock, Agent};
use crate::ids::Guid;

fn jitter(d: Duration) -> Duration {
    // +-10%, from the CSPRNG (no need for anything weaker here).
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let f = 0.9 + 0.2 * (u16::from_be_bytes(b) as f64 / u16::MAX as f64);
    d.mul_f64(f)
}

/// When to renew a certificate received at `received` that ends at `not_after`.
pub fn renewal_delay(received: SystemTime, not_after: SystemTime, fraction: f64) -> Duration {
    let life = not_after.duration_since(received).unwrap_or_default();
    jitter(life.mul_f64(fraction))
}

pub(super) fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(500);
    let exp = base.saturating_mul(1u32 << failures.min(16));
    jitter(exp.min(max))
}

/// Renews every instance whose time has come, each in its own task so one slow renewal
/// never delays the others.
pub(super) async fn renewal_loop(agent: Arc<Agent>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = Instant::now();
        let due: Vec<Guid> = {
            let mut m = lock(&agent.instances);
            m.iter_mut()
                .filter(|(_, s)| !s.in_flight && s.renew_at <= now)
                .map(|(g, s)| {
                    s.in_flight = true;
                    g.clone()
                })
                .collect()
        };
        for g in due {
            let a = agent.clone();
            tokio::spawn(async move {
                if a.refresh_instance(&g).await.is_ok() {
                    tracing::info!(instance = %g, "instance certificate renewed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_the_fraction_of_the_life_with_ten_percent_jitter() {
        let now = SystemTime::now();
        let end = now + Duration::from_secs(1000);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let d = renewal_delay(now, end, 0.5);
            assert!(
                d >= Duration::from_secs(450) && d <= Duration::from_secs(550),
                "{d:?}"
            );
            seen.insert(d.as_millis());
        }
        assert!(seen.len() > 50, "the jitter spreads renewals");
        assert_eq!(
            renewal_delay(end, now, 0.5),
            Duration::ZERO,
            "an expired certificate renews now"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(60);
        assert!(backoff(1, max) <= Duration::from_millis(1100));
        assert!(backoff(4, max) >= Duration::from_millis(7200));
        for n in [10, 20, 1000] {
            let b = backoff(n, max);
            assert!(
                b <= Duration::from_secs(66) && b >= Duration::from_secs(54),
                "{b:?}"
            );
        }
    }
}
