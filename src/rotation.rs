//! The rotation state machine (prepared, active, retiring, retired) as pure functions over
//! generation records.
//!
//! Nothing here touches keys or storage, and nothing here calls back into the authority: the
//! authority calls these under its write lock and persists the result before answering, which
//! keeps the rules testable alone and the dependency one-way.

use std::time::{Duration, SystemTime};

use crate::ids::AuthorityId;
use crate::store::{AuthorityRecord, GenerationState};
use crate::timefmt::rfc3339;

/// A refused transition, with the reason an operator reads in the 409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    /// The generation does not exist.
    #[error("authority {0} does not exist")]
    NotFound(AuthorityId),
    /// The transition is not allowed now.
    #[error("{0}")]
    Conflict(String),
}

fn human(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn find(gens: &mut [AuthorityRecord], id: AuthorityId) -> Result<usize, RotationError> {
    gens.iter()
        .position(|g| g.id == id)
        .ok_or(RotationError::NotFound(id))
}

/// May a new generation be prepared? Only when none is already prepared.
pub(crate) fn check_prepare(gens: &[AuthorityRecord]) -> Result<(), RotationError> {
    if let Some(p) = gens.iter().find(|g| g.state == GenerationState::Prepared) {
        return Err(RotationError::Conflict(format!(
            "authority {} is already prepared; activate it before preparing another",
            p.id
        )));
    }
    Ok(())
}

/// Activates `id`: it must be prepared and published for `delay` (unless `force`). The former
/// active generation becomes retiring. Returns the indexes of changed records.
pub(crate) fn activate(
    gens: &mut [AuthorityRecord],
    id: AuthorityId,
    force: bool,
    delay: Duration,
    now: SystemTime,
) -> Result<Vec<usize>, RotationError> {
    let i = find(gens, id)?;
    let g = &gens[i];
    if g.state != GenerationState::Prepared {
        return Err(RotationError::Conflict(format!(
            "authority {id} is {}, only a prepared authority can be activated",
            g.state.as_str()
        )));
    }
    let published = g.published_at.unwrap_or(g.created_at);
    let ready_at = published + delay;
    if !force && now < ready_at {
        let left = ready_at.duration_since(now).unwrap_or_default();
        return Err(RotationError::Conflict(format!(
            "authority {id} has been published for less than the propagation delay: {} left (activatable at {}); pass \"force\": true to override",
            human(left),
            rfc3339(ready_at)
        )));
    }
    let mut changed = vec![i];
    for (j, other) in gens.iter_mut().enumerate() {
        if other.state == GenerationState::Active {
            other.state = GenerationState::Retiring;
            other.retiring_at = Some(now);
            changed.push(j);
        }
    }
    let g = &mut gens[i];
    g.state = GenerationState::Active;
    g.activated_at = Some(now);
    Ok(changed)
}

/// Retires `id`: it must be retiring and everything it signed expired by `now` (unless
/// `force`). `last_leaf` is the latest notAfter it issued.
pub(crate) fn retire(
    gens: &mut [AuthorityRecord],
    id: AuthorityId,
    force: bool,
    last_leaf: Option<SystemTime>,
    now: SystemTime,
) -> Result<Vec<usize>, RotationError> {
    let i = find(gens, id)?;
    let g = &mut gens[i];
    if g.state != GenerationState::Retiring {
        return Err(RotationError::Conflict(format!(
            "authority {id} is {}, only a retiring authority can be retired",
            g.state.as_str()
        )));
    }
    if let Some(last) = last_leaf {
        if !force && now < last {
            let left = last.duration_since(now).unwrap_or_default();
            return Err(RotationError::Conflict(format!(
                "authority {id} signed certificates that are valid until {} ({} left); pass \"force\": true to override",
                rfc3339(last),
                human(left)
            )));
        }
    }
    g.state = GenerationState::Retired;
    g.retired_at = Some(now);
    Ok(vec![i])
}

/// One step the automatic schedule wants to take, with its reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Prepare a new generation.
    Prepare(String),
    /// Activate this prepared generation; `true` when the five-sixths deadline overrides
    /// the propagation delay.
    Activate(AuthorityId, String, bool),
    /// Retire this retiring generation.
    Retire(AuthorityId, String),
    /// Renew the active generation's intermediate under the same root.
    RenewIntermediate(AuthorityId, String),
}

fn fraction(start: SystemTime, end: SystemTime, num: u32, den: u32) -> SystemTime {
    let life = end.duration_since(start).unwrap_or_default();
    start + life * num / den
}

/// What the automatic schedule does next, if anything (at most one step per call).
///
/// - prepare when the active root has lived half its life;
/// - activate a prepared generation once it has been published for `delay`, and by five
///   sixths of the active root's life at the latest (then even before the delay has passed,
///   since an expiring root is worse than a short propagation);
/// - retire a retiring generation once its last certificate expired;
/// - renew the intermediate when a third of its life is left.
pub(crate) fn next_step(
    gens: &[AuthorityRecord],
    last_leaf: impl Fn(AuthorityId) -> Option<SystemTime>,
    delay: Duration,
    now: SystemTime,
) -> Option<Step> {
    for g in gens.iter().filter(|g| g.state == GenerationState::Retiring) {
        match last_leaf(g.id) {
            Some(last) if last > now => {}
            _ => {
                return Some(Step::Retire(
                    g.id,
                    "every certificate it signed has expired".into(),
                ))
            }
        }
    }
    let active = gens.iter().find(|g| g.state == GenerationState::Active)?;
    let root_start = life_start(&active.root, active.created_at);
    let root_end = encoded(active.root.not_after);
    if let Some(p) = gens.iter().find(|g| g.state == GenerationState::Prepared) {
        let published = p.published_at.unwrap_or(p.created_at);
        let deadline = fraction(root_start, root_end, 5, 6);
        if now >= published + delay {
            return Some(Step::Activate(
                p.id,
                format!("published for the propagation delay ({})", human(delay)),
                false,
            ));
        }
        if now >= deadline {
            return Some(Step::Activate(
                p.id,
                "the active root reached five sixths of its lifetime".into(),
                true,
            ));
        }
    } else if now >= fraction(root_start, root_end, 1, 2) {
        return Some(Step::Prepare(format!(
            "active root {} has lived half its lifetime (expires {})",
            active.id,
            rfc3339(root_end)
        )));
    }
    intermediate_due(active, now).map(|why| Step::RenewIntermediate(active.id, why))
}

/// A step the server will take by itself, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    /// `prepare`, `activate`, `retire` or `renew-intermediate`.
    pub(crate) action: &'static str,
    /// The generation it applies to (for `prepare`, the active one).
    pub(crate) authority: AuthorityId,
    /// When it is due; in the past means at the next check.
    pub(crate) at: SystemTime,
    /// Why then.
    pub(crate) reason: String,
}

/// When a prepared generation may be activated without `force`.
pub(crate) fn activatable_at(g: &AuthorityRecord, delay: Duration) -> Option<SystemTime> {
    (g.state == GenerationState::Prepared).then(|| g.published_at.unwrap_or(g.created_at) + delay)
}

/// The earliest step the server takes by itself: [`next_step`]'s rules read as times
/// (rotation steps only when `automatic`), and the intermediate renewal of
/// [`intermediate_due`], which runs either way.
pub(crate) fn next_due(
    gens: &[AuthorityRecord],
    last_leaf: impl Fn(AuthorityId) -> Option<SystemTime>,
    delay: Duration,
    automatic: bool,
    now: SystemTime,
) -> Option<Due> {
    let mut due = Vec::new();
    let active = gens.iter().find(|g| g.state == GenerationState::Active);
    if automatic {
        for g in gens.iter().filter(|g| g.state == GenerationState::Retiring) {
            let (at, reason) = match last_leaf(g.id) {
                Some(last) if last > now => (last, "its last certificate expires".to_string()),
                _ => (now, "every certificate it signed has expired".to_string()),
            };
            due.push(Due {
                action: "retire",
                authority: g.id,
                at,
                reason,
            });
        }
        if let Some(active) = active {
            let root_start = life_start(&active.root, active.created_at);
            let root_end = encoded(active.root.not_after);
            if let Some(p) = gens.iter().find(|g| g.state == GenerationState::Prepared) {
                let ready = p.published_at.unwrap_or(p.created_at) + delay;
                let deadline = fraction(root_start, root_end, 5, 6);
                let (at, reason) = if ready <= deadline {
                    (
                        ready,
                        format!("published for the propagation delay ({})", human(delay)),
                    )
                } else {
                    (
                        deadline,
                        "the active root reaches five sixths of its lifetime".to_string(),
                    )
                };
                due.push(Due {
                    action: "activate",
                    authority: p.id,
                    at,
                    reason,
                });
            } else {
                due.push(Due {
                    action: "prepare",
                    authority: active.id,
                    at: fraction(root_start, root_end, 1, 2),
                    reason: format!(
                        "active root {} reaches half its lifetime (expires {})",
                        active.id,
                        rfc3339(root_end)
                    ),
                });
            }
        }
    }
    if let Some(active) = active {
        if let Some(im) = active.intermediates.last() {
            let end = encoded(im.not_after);
            if end < encoded(active.root.not_after) {
                due.push(Due {
                    action: "renew-intermediate",
                    authority: active.id,
                    at: fraction(life_start(im, active.created_at), end, 2, 3),
                    reason: format!(
                        "the intermediate reaches two thirds of its lifetime (expires {})",
                        rfc3339(end)
                    ),
                });
            }
        }
    }
    due.into_iter().min_by_key(|d| d.at)
}

/// Whether the active generation's intermediate should be renewed under the same root (a
/// third of its life left), with the reason. Not part of root rotation: the server does this
/// whether or not `rotation.automatic` is set, since leaves can never outlive it.
pub(crate) fn intermediate_due(active: &AuthorityRecord, now: SystemTime) -> Option<String> {
    let im = active.intermediates.last()?;
    let start = life_start(im, active.created_at);
    let end = encoded(im.not_after);
    // Renewing is pointless once the root itself ends before a new intermediate could.
    (now >= fraction(start, end, 2, 3) && end < encoded(active.root.not_after)).then(|| {
        format!(
            "intermediate has a third of its lifetime left (expires {})",
            rfc3339(end)
        )
    })
}

/// A CA certificate's end as relying parties see it: X.509 encodes notAfter in whole
/// seconds, truncated, so up to a second before the recorded time. Negligible for real
/// lifetimes, but a root configured for 2s lives between 1s and 2s, and the schedule's
/// fractions must be of that life.
fn encoded(t: SystemTime) -> SystemTime {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs())
}

/// When a CA certificate's life began for the schedule: its issue time (its notBefore is
/// backdated for clock skew, which would otherwise make every step come early).
fn life_start(ca: &crate::store::CaKeyRecord, fallback: SystemTime) -> SystemTime {
    ca.issued_at.unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CaKeyRecord;

    const DAY: Duration = Duration::from_secs(86400);

    fn gen(
        id: u32,
        state: GenerationState,
        created: SystemTime,
        root_life: Duration,
    ) -> AuthorityRecord {
        AuthorityRecord {
            id: AuthorityId(id),
            state,
            created_at: created,
            published_at: Some(created),
            activated_at: None,
            retiring_at: None,
            retired_at: None,
            root: CaKeyRecord {
                certificate: vec![],
                sealed_key: vec![],
                not_after: created + root_life,
                issued_at: Some(created),
            },
            intermediates: vec![],
        }
    }

    #[test]
    fn preparing_twice_is_refused() {
        let now = SystemTime::now();
        let gens = vec![
            gen(1, GenerationState::Active, now, DAY),
            gen(2, GenerationState::Prepared, now, DAY),
        ];
        assert!(matches!(
            check_prepare(&gens),
            Err(RotationError::Conflict(_))
        ));
        assert!(check_prepare(&gens[..1]).is_ok());
    }

    #[test]
    fn activation_before_the_propagation_delay_says_how_long_is_left() {
        let now = SystemTime::now();
        let mut gens = vec![
            gen(1, GenerationState::Active, now, DAY),
            gen(2, GenerationState::Prepared, now, DAY),
        ];
        let e = activate(
            &mut gens,
            AuthorityId(2),
            false,
            Duration::from_secs(600),
            now + Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(e.to_string().contains("9m00s left"), "{e}");
        assert_eq!(gens[1].state, GenerationState::Prepared);
    }

    #[test]
    fn activation_moves_the_old_active_generation_to_retiring() {
        let now = SystemTime::now();
        let mut gens = vec![
            gen(1, GenerationState::Active, now, DAY),
            gen(2, GenerationState::Prepared, now, DAY),
        ];
        let changed = activate(
            &mut gens,
            AuthorityId(2),
            false,
            Duration::from_secs(600),
            now + DAY / 2,
        )
        .unwrap();
        assert_eq!(changed.len(), 2);
        assert_eq!(gens[0].state, GenerationState::Retiring);
        assert_eq!(gens[1].state, GenerationState::Active);
    }

    #[test]
    fn force_activates_before_the_delay() {
        let now = SystemTime::now();
        let mut gens = vec![
            gen(1, GenerationState::Active, now, DAY),
            gen(2, GenerationState::Prepared, now, DAY),
        ];
        activate(
            &mut gens,
            AuthorityId(2),
            true,
            Duration::from_secs(600),
            now,
        )
        .unwrap();
        assert_eq!(gens[1].state, GenerationState::Active);
    }

    #[test]
    fn only_a_prepared_generation_can_be_activated() {
        let now = SystemTime::now();
        let mut gens = vec![
            gen(1, GenerationState::Active, now, DAY),
            gen(2, GenerationState::Retired, now, DAY),
        ];
        for id in [1, 2] {
            let e = activate(&mut gens, AuthorityId(id), true, Duration::ZERO, now).unwrap_err();
            assert!(matches!(e, RotationError::Conflict(_)));
        }
        assert_eq!(
            activate(&mut gens, AuthorityId(9), true, Duration::ZERO, now).unwrap_err(),
            RotationError::NotFound(AuthorityId(9))
        );
    }

    #[test]
    fn retirement_waits_for_the_last_certificate_to_expire() {
        let now = SystemTime::now();
        let mut gens = vec![gen(1, GenerationState::Retiring, now, DAY)];
        let last = Some(now + Duration::from_secs(3600));
        let e = retire(&mut gens, AuthorityId(1), false, last, now).unwrap_err();
        assert!(e.to_string().contains("1h00m00s left"), "{e}");
        retire(
            &mut gens,
            AuthorityId(1),
            false,
            last,
            now + Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(gens[0].state, GenerationState::Retired);
    }

    #[test]
    fn force_retires_early_but_only_a_retiring_generation() {
        let now = SystemTime::now();
        let mut gens = vec![
            gen(1, GenerationState::Retiring, now, DAY),
            gen(2, GenerationState::Active, now, DAY),
        ];
        assert!(retire(&mut gens, AuthorityId(2), true, None, now).is_err());
        retire(&mut gens, AuthorityId(1), true, Some(now + DAY), now).unwrap();
        assert_eq!(gens[0].state, GenerationState::Retired);
    }

    #[test]
    fn the_schedule_prepares_at_half_life_and_not_before() {
        let t0 = SystemTime::now();
        let gens = vec![gen(1, GenerationState::Active, t0, DAY)];
        let none = |_| None;
        assert_eq!(next_step(&gens, none, Duration::ZERO, t0 + DAY / 3), None);
        assert!(matches!(
            next_step(&gens, none, Duration::ZERO, t0 + DAY / 2),
            Some(Step::Prepare(_))
        ));
    }

    #[test]
    fn the_schedule_activates_after_the_delay_or_at_five_sixths() {
        let t0 = SystemTime::now();
        let mut p = gen(2, GenerationState::Prepared, t0 + DAY / 2, DAY);
        p.published_at = Some(t0 + DAY / 2);
        let gens = vec![gen(1, GenerationState::Active, t0, DAY), p];
        let none = |_| None;
        let delay = DAY / 2;
        assert_eq!(next_step(&gens, none, delay, t0 + DAY * 2 / 3), None);
        assert!(matches!(
            next_step(&gens, none, delay, t0 + DAY * 5 / 6),
            Some(Step::Activate(AuthorityId(2), _, true))
        ));
        assert!(matches!(
            next_step(
                &gens,
                none,
                Duration::from_secs(60),
                t0 + DAY / 2 + Duration::from_secs(60)
            ),
            Some(Step::Activate(AuthorityId(2), _, false))
        ));
    }

    #[test]
    fn the_schedule_measures_a_short_root_to_its_whole_second_not_after() {
        // A 2 s root created 0.9 s into a second ends, as encoded, 1.1 s after its creation.
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_900);
        let gens = vec![gen(1, GenerationState::Active, t0, Duration::from_secs(2))];
        let none = |_| None;
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(next_step(&gens, none, Duration::ZERO, at(500)), None);
        assert!(matches!(
            next_step(&gens, none, Duration::ZERO, at(550)),
            Some(Step::Prepare(_))
        ));
        let mut p = gen(
            2,
            GenerationState::Prepared,
            at(550),
            Duration::from_secs(2),
        );
        p.published_at = Some(at(550));
        let gens = vec![gens[0].clone(), p];
        let delay = Duration::from_secs(1);
        assert_eq!(next_step(&gens, none, delay, at(900)), None);
        assert!(matches!(
            next_step(&gens, none, delay, at(917)),
            Some(Step::Activate(AuthorityId(2), _, true))
        ));
    }

    #[test]
    fn the_schedule_retires_only_when_allowed() {
        let t0 = SystemTime::now();
        let gens = vec![
            gen(1, GenerationState::Retiring, t0, DAY),
            gen(2, GenerationState::Active, t0, DAY),
        ];
        let later = t0 + Duration::from_secs(100);
        assert_eq!(next_step(&gens, |_| Some(later), Duration::ZERO, t0), None);
        assert!(matches!(
            next_step(&gens, |_| Some(later), Duration::ZERO, later),
            Some(Step::Retire(AuthorityId(1), _))
        ));
    }
}
