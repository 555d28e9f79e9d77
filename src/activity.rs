//! What this replica saw lately, for the operator console (`GET /v1/activity`): issuances per
//! minute over the last hour, each cell's last request, and the certificates that expire
//! soonest without a newer one for the same subject.
//!
//! Memory only, per replica, and bounded: the store is never read for it, so the console can
//! refresh every few seconds at no cost to issuance. A restart starts it empty, and on several
//! replicas each one knows what it served (the console shows whichever answers).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::store::{CertificateKind, CertificateRecord};

/// Minutes of issuance history kept.
pub(crate) const WINDOW_MINUTES: usize = 60;

/// Most cells remembered; beyond that the one heard from least recently is forgotten.
const MAX_CELLS: usize = 10_000;

/// Most subjects whose latest certificate is remembered for "expiring soon".
const MAX_SUBJECTS: usize = 50_000;

/// Issuances in one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MinuteCount {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    /// Certificates issued.
    pub issued: u64,
    /// Issuance requests refused (4xx) or failed (5xx).
    pub refused: u64,
}

/// One cell's last request as this replica saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CellActivity {
    /// The cell's name.
    pub name: String,
    /// When the request was answered.
    pub at: SystemTime,
    /// Its method.
    pub method: String,
    /// Its path.
    pub path: String,
    /// The status it got.
    pub status: u16,
    /// Requests seen from this cell since this replica started.
    pub requests: u64,
}

/// The latest certificate of one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LatestCertificate {
    /// Kind.
    pub kind: CertificateKind,
    /// Instance GUID or name.
    pub subject: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Signing generation.
    pub authority_id: String,
    /// End of validity.
    pub not_after: SystemTime,
}

#[derive(Debug, Default)]
struct Inner {
    /// A ring indexed by minute modulo [`WINDOW_MINUTES`].
    minutes: Vec<MinuteCount>,
    cells: HashMap<String, CellActivity>,
    /// Keyed by kind and subject (`cell:c1`).
    latest: HashMap<String, LatestCertificate>,
}

/// The recent activity of this replica. See the module docs.
#[derive(Debug)]
pub(crate) struct Activity {
    started_at: SystemTime,
    inner: Mutex<Inner>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started_at: SystemTime::now(),
            inner: Mutex::new(Inner {
                minutes: vec![MinuteCount::default(); WINDOW_MINUTES],
                ..Default::default()
            }),
        }
    }
}

fn minute_of(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0)
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update is a few assignments that cannot leave the state half-made.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When this replica started counting.
    pub(crate) fn started_at(&self) -> SystemTime {
        self.started_at
    }

    fn bucket(inner: &mut Inner, minute: u64) -> &mut MinuteCount {
        let slot = &mut inner.minutes[(minute % WINDOW_MINUTES as u64) as usize];
        if slot.minute != minute {
            *slot = MinuteCount {
                minute,
                ..Default::default()
            };
        }
        slot
    }

    /// Counts issued certificates and remembers each as its subject's latest.
    pub(crate) fn issued(&self, records: &[&CertificateRecord], now: SystemTime) {
        let mut inner = self.lock();
        Self::bucket(&mut inner, minute_of(now)).issued += records.len() as u64;
        for r in records {
            let subject = match (&r.instance_guid, &r.name) {
                (Some(g), _) => g.to_string(),
                (None, Some(n)) => n.to_string(),
                (None, None) => continue,
            };
            let key = format!("{}:{subject}", r.kind.as_str());
            if inner.latest.len() >= MAX_SUBJECTS && !inner.latest.contains_key(&key) {
                // Full: forget the subject whose certificate ended first (long gone, or
                // about to be replaced), never the new one.
                if let Some(k) = inner
                    .latest
                    .iter()
                    .min_by_key(|(_, v)| v.not_after)
                    .map(|(k, _)| k.clone())
                {
                    inner.latest.remove(&k);
                }
            }
            inner.latest.insert(
                key,
                LatestCertificate {
                    kind: r.kind,
                    subject,
                    serial: r.serial.to_string(),
                    authority_id: r.authority_id.to_string(),
                    not_after: r.not_after,
                },
            );
        }
    }

    /// Counts `n` refused or failed issuance requests.
    pub(crate) fn refused(&self, n: u64, now: SystemTime) {
        let mut inner = self.lock();
        Self::bucket(&mut inner, minute_of(now)).refused += n;
    }

    /// Remembers a cell's request.
    pub(crate) fn cell_request(
        &self,
        name: &str,
        method: &str,
        path: &str,
        status: u16,
        now: SystemTime,
    ) {
        let mut inner = self.lock();
        if inner.cells.len() >= MAX_CELLS && !inner.cells.contains_key(name) {
            if let Some(k) = inner
                .cells
                .values()
                .min_by_key(|c| c.at)
                .map(|c| c.name.clone())
            {
                inner.cells.remove(&k);
            }
        }
        let requests = inner.cells.get(name).map_or(0, |c| c.requests) + 1;
        inner.cells.insert(
            name.to_string(),
            CellActivity {
                name: name.to_string(),
                at: now,
                method: method.to_string(),
                path: path.to_string(),
                status,
                requests,
            },
        );
    }

    /// Issuances per minute over the last hour, oldest first, one entry per minute (zeros
    /// included) ending with the minute of `now`.
    pub(crate) fn per_minute(&self, now: SystemTime) -> Vec<MinuteCount> {
        let inner = self.lock();
        let current = minute_of(now);
        (0..WINDOW_MINUTES as u64)
            .rev()
            .map(|back| {
                let minute = current.saturating_sub(back);
                let slot = inner.minutes[(minute % WINDOW_MINUTES as u64) as usize];
                if slot.minute == minute {
                    slot
                } else {
                    MinuteCount {
                        minute,
                        ..Default::default()
                    }
                }
            })
            .collect()
    }

    /// Every remembered cell, the most recently heard first.
    pub(crate) fn cells(&self) -> Vec<CellActivity> {
        let mut v: Vec<CellActivity> = self.lock().cells.values().cloned().collect();
        v.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.name.cmp(&b.name)));
        v
    }

    /// The latest certificates that end within `within` of `now` (or ended less than
    /// `within` ago), soonest first, at most `limit`.
    pub(crate) fn expiring(
        &self,
        now: SystemTime,
        within: Duration,
        limit: usize,
    ) -> Vec<LatestCertificate> {
        let horizon = now + within;
        let since = now.checked_sub(within).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut v: Vec<LatestCertificate> = self
            .lock()
            .latest
            .values()
            .filter(|c| c.not_after <= horizon && c.not_after >= since)
            .cloned()
            .collect();
        v.sort_by_key(|c| c.not_after);
        v.truncate(limit);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::AuthorityId;

    const S1: &str = "00000000000000000000000000000001";
    const S2: &str = "00000000000000000000000000000002";
    const S3: &str = "00000000000000000000000000000003";

    fn record(
        kind: CertificateKind,
        name: &str,
        serial: &str,
        not_after: SystemTime,
    ) -> CertificateRecord {
        CertificateRecord {
            serial: serial.parse().unwrap(),
            kind,
            instance_guid: None,
            app_guid: None,
            space_guid: None,
            organization_guid: None,
            name: Some(name.parse().unwrap()),
            requested_by: "test".into(),
            authority_id: AuthorityId(1),
            not_before: SystemTime::UNIX_EPOCH,
            not_after,
            revoked_at: None,
            revocation_reason: None,
        }
    }

    #[test]
    fn issuances_are_counted_per_minute_over_the_last_hour() {
        let a = Activity::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 * 60);
        let r = record(CertificateKind::Cell, "c1", S1, t0);
        a.issued(&[&r, &r], t0);
        a.refused(1, t0 + Duration::from_secs(60));
        a.issued(&[&r], t0 + Duration::from_secs(120));
        let m = a.per_minute(t0 + Duration::from_secs(120));
        assert_eq!(m.len(), WINDOW_MINUTES);
        assert_eq!(m[WINDOW_MINUTES - 1].issued, 1);
        assert_eq!(m[WINDOW_MINUTES - 2].refused, 1);
        assert_eq!(m[WINDOW_MINUTES - 3].issued, 2);
        // An hour later the old minutes are gone, not counted again.
        let later = a.per_minute(t0 + Duration::from_secs(3600 + 180));
        assert_eq!(later.iter().map(|c| c.issued + c.refused).sum::<u64>(), 0);
    }

    #[test]
    fn a_newer_certificate_replaces_its_subjects_older_one_in_expiring_soon() {
        let a = Activity::default();
        let now = SystemTime::now();
        let soon = now + Duration::from_secs(60);
        a.issued(&[&record(CertificateKind::Cell, "c1", S1, soon)], now);
        a.issued(
            &[&record(
                CertificateKind::Component,
                "c2",
                S2,
                soon + Duration::from_secs(5),
            )],
            now,
        );
        let e = a.expiring(now, Duration::from_secs(3600), 10);
        assert_eq!(
            e.iter().map(|c| c.serial.as_str()).collect::<Vec<_>>(),
            [S1, S2]
        );
        a.issued(
            &[&record(
                CertificateKind::Cell,
                "c1",
                S3,
                now + Duration::from_secs(86400),
            )],
            now,
        );
        let e = a.expiring(now, Duration::from_secs(3600), 10);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].subject, "c2");
    }

    #[test]
    fn cells_are_listed_by_their_last_request() {
        let a = Activity::default();
        let now = SystemTime::now();
        a.cell_request("c1", "POST", "/v1/instance-certificates", 201, now);
        a.cell_request(
            "c2",
            "GET",
            "/v1/trust-bundle",
            200,
            now + Duration::from_secs(1),
        );
        a.cell_request(
            "c1",
            "POST",
            "/v1/instance-certificates/batch",
            200,
            now + Duration::from_secs(2),
        );
        let c = a.cells();
        assert_eq!(c[0].name, "c1");
        assert_eq!(c[0].requests, 2);
        assert_eq!(c[0].path, "/v1/instance-certificates/batch");
        assert_eq!(c[1].name, "c2");
    }
}
