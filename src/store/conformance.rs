//! The promises every [`Store`] backend keeps, as checks any backend can run.
//!
//! A backend provides a [`Harness`] (open a fresh, empty store; reopen the same data) and
//! generates one `#[test]` per promise with [`store_conformance_tests!`](crate::store_conformance_tests),
//! so a failure names the promise that broke:
//!
//! ```ignore
//! #[cfg(test)]
//! mod conformance {
//!     lanyard::store_conformance_tests!(MyHarness::new());
//! }
//! ```
//!
//! The checks write only whole-second times, the precision every store keeps (records carry
//! RFC 3339 times without fractions). They return a [`Violation`] instead of panicking, so
//! they can also run outside a test harness (behind the `store-conformance` feature), for
//! example against a live database in an integration test.

use std::collections::HashSet;
use std::sync::Barrier;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    AuthorityRecord, CaKeyRecord, CertificateCursor, CertificateKind, CertificateQuery,
    CertificateRecord, GenerationState, JoinTokenRecord, LeaseGrant, ReleaseOutcome, RevokeOutcome,
    Store, StoreError,
};
use crate::audit::{AuditEvent, Verifier};
use crate::ids::{AuthorityId, Guid, Name, Serial};

/// Opens stores of one backend for the checks.
pub(crate) trait Harness {
    /// The backend under test.
    type Store: Store;

    /// Opens a fresh, empty store. Every call must give a store that shares nothing with the
    /// stores of earlier calls.
    fn open_fresh(&mut self) -> Result<Self::Store, StoreError>;

    /// Closes `store` (drops it, ends its connections) and opens the same data again, as a
    /// restarted process would.
    fn reopen(&mut self, store: Self::Store) -> Result<Self::Store, StoreError>;
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Violation {
    /// The backend answered an error where the promise says it succeeds.
    #[error("unexpected store error: {0}")]
    Store(#[from] StoreError),
    /// The backend answered, but not what the promise says.
    #[error("{0}")]
    Broken(String),
    /// The check could not build its test data (a bug in the check, not in the backend).
    #[error("test setup: {0}")]
    Setup(String),
}

/// Fails the check with a message unless `cond` holds.
macro_rules! promise {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(Violation::Broken(format!($($msg)+)));
        }
    };
}

/// Generates one `#[test]` per store promise, each running its check against a harness made
/// by `$harness` (an expression evaluated once per test).
#[macro_export]
macro_rules! store_conformance_tests {
    ($harness:expr) => {
        $crate::store_conformance_tests!(@each $harness;
            meta_values_read_back_and_keys_are_independent,
            authorities_start_empty_with_sequence_zero,
            saved_authorities_and_the_sequence_read_back_together,
            authorities_are_listed_oldest_first,
            a_conditional_save_writes_only_over_the_version_it_read,
            of_concurrent_conditional_saves_exactly_one_wins,
            new_authority_ids_are_unique_and_above_every_stored_id,
            signed_certificates_are_recorded_only_while_the_signer_is_active,
            the_first_cell_to_get_an_instance_owns_it,
            a_binding_is_released_by_its_owner_or_by_an_operator,
            of_concurrent_first_issuances_for_one_instance_exactly_one_owner_wins,
            a_group_write_records_every_callers_items_but_the_refused_one,
            a_failed_group_write_records_nothing_of_any_item,
            audit_entries_are_written_with_their_change_and_chain,
            of_concurrent_appends_the_audit_chain_stays_gapless,
            the_init_lock_has_one_holder_at_a_time,
            inserted_certificates_read_back_field_for_field,
            a_taken_serial_fails_the_whole_batch_and_writes_nothing,
            a_serial_repeated_within_one_batch_fails_and_writes_nothing,
            updating_a_certificate_replaces_it_and_keeps_it_findable,
            updating_an_unknown_serial_fails_and_writes_nothing,
            a_revoke_writes_the_record_and_the_index_together_and_survives_a_reopen,
            revoking_again_leaves_the_first_revocation_as_it_is,
            of_concurrent_revokes_of_one_serial_exactly_one_revokes_it,
            revoking_an_unknown_serial_fails_and_writes_nothing,
            queries_filter_by_instance_and_app,
            queries_answer_newest_first_within_the_limit,
            pages_after_a_cursor_visit_every_record_once_in_order,
            a_query_by_serial_answers_that_record_if_it_passes_the_other_filters,
            expired_records_are_found_by_expiry_and_deleted_with_their_indexes,
            revoked_lists_the_revocations_of_that_generation_only,
            last_leaf_not_after_is_the_latest_of_each_generation,
            a_join_token_is_read_without_spending_it_and_taken_once,
            of_concurrent_takes_of_one_join_token_exactly_one_wins,
            expired_join_tokens_are_purged_and_live_ones_stay,
            everything_written_is_there_after_reopening,
            a_lease_has_one_holder_until_it_lapses,
            a_store_that_answers_answers_the_ping,
            the_whole_store_reads_back_for_a_copy,
        );
    };
    (@each $harness:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let mut harness = $harness;
                if let Err(violation) = $crate::store::conformance::$check(&mut harness) {
                    panic!("{}: {}", stringify!($check), violation);
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------
// Test data. Whole seconds from a fixed origin, so every backend can keep them exactly.

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn guid(s: &str) -> Result<Guid, Violation> {
    s.parse()
        .map_err(|e| Violation::Setup(format!("GUID {s}: {e}")))
}

fn name(s: &str) -> Result<Name, Violation> {
    s.parse()
        .map_err(|e| Violation::Setup(format!("name {s}: {e}")))
}

fn serial() -> Result<Serial, Violation> {
    Serial::random().map_err(|_| Violation::Setup("no random serial".into()))
}

/// An instance certificate of `instance`/`app` signed by `authority`.
fn instance(
    instance: &str,
    app: &str,
    authority: u32,
    not_before: u64,
    not_after: u64,
) -> Result<CertificateRecord, Violation> {
    Ok(CertificateRecord {
        serial: serial()?,
        kind: CertificateKind::Instance,
        instance_guid: Some(guid(instance)?),
        app_guid: Some(guid(app)?),
        space_guid: Some(guid("5ace")?),
        organization_guid: Some(guid("0a9")?),
        name: None,
        requested_by: "spiffe://lanyard.internal/lanyard/cell/cell-1".into(),
        authority_id: AuthorityId(authority),
        not_before: at(not_before),
        not_after: at(not_after),
        revoked_at: None,
        revocation_reason: None,
    })
}

/// A cell credential (no instance, no app) signed by `authority`.
fn credential(
    cell: &str,
    authority: u32,
    not_before: u64,
    not_after: u64,
) -> Result<CertificateRecord, Violation> {
    Ok(CertificateRecord {
        serial: serial()?,
        kind: CertificateKind::Cell,
        instance_guid: None,
        app_guid: None,
        space_guid: None,
        organization_guid: None,
        name: Some(name(cell)?),
        requested_by: "join-token created by operator".into(),
        authority_id: AuthorityId(authority),
        not_before: at(not_before),
        not_after: at(not_after),
        revoked_at: None,
        revocation_reason: None,
    })
}

fn ca_key(tag: u8, not_after: u64) -> CaKeyRecord {
    CaKeyRecord {
        certificate: vec![0x30, tag, 1, 2, 3],
        sealed_key: vec![tag; 40],
        not_after: at(not_after),
        issued_at: Some(at(0)),
    }
}

pub(crate) fn authority(id: u32, state: GenerationState) -> AuthorityRecord {
    let tag = id as u8;
    AuthorityRecord {
        id: AuthorityId(id),
        state,
        created_at: at(u64::from(id)),
        published_at: Some(at(u64::from(id) + 1)),
        activated_at: None,
        retiring_at: None,
        retired_at: None,
        root: ca_key(tag, 1_000_000),
        intermediates: vec![ca_key(tag.wrapping_add(100), 100_000)],
    }
}

fn token(cell: &str, expires: u64) -> Result<JoinTokenRecord, Violation> {
    Ok(JoinTokenRecord {
        name: name(cell)?,
        created_by: "spiffe://lanyard.internal/lanyard/operator/admin".into(),
        created_at: at(0),
        expires_at: at(expires),
    })
}

fn query(
    instance: Option<&str>,
    app: Option<&str>,
    limit: usize,
) -> Result<CertificateQuery, Violation> {
    Ok(CertificateQuery {
        instance_guid: instance.map(guid).transpose()?,
        app_guid: app.map(guid).transpose()?,
        serial: None,
        after: None,
        limit,
    })
}

// ---------------------------------------------------------------------------------------
// Comparisons (the records do not derive `PartialEq`: a sealed key is not compared lightly
// in production code).

fn same_ca_key(a: &CaKeyRecord, b: &CaKeyRecord) -> bool {
    a.certificate == b.certificate
        && a.sealed_key == b.sealed_key
        && a.not_after == b.not_after
        && a.issued_at == b.issued_at
}

fn same_authority(a: &AuthorityRecord, b: &AuthorityRecord) -> bool {
    a.id == b.id
        && a.state == b.state
        && a.created_at == b.created_at
        && a.published_at == b.published_at
        && a.activated_at == b.activated_at
        && a.retiring_at == b.retiring_at
        && a.retired_at == b.retired_at
        && same_ca_key(&a.root, &b.root)
        && a.intermediates.len() == b.intermediates.len()
        && a.intermediates
            .iter()
            .zip(&b.intermediates)
            .all(|(x, y)| same_ca_key(x, y))
}

fn same_cert(a: &CertificateRecord, b: &CertificateRecord) -> bool {
    a.serial == b.serial
        && a.kind == b.kind
        && a.instance_guid == b.instance_guid
        && a.app_guid == b.app_guid
        && a.space_guid == b.space_guid
        && a.organization_guid == b.organization_guid
        && a.name == b.name
        && a.requested_by == b.requested_by
        && a.authority_id == b.authority_id
        && a.not_before == b.not_before
        && a.not_after == b.not_after
        && a.revoked_at == b.revoked_at
        && a.revocation_reason == b.revocation_reason
}

fn same_token(a: &JoinTokenRecord, b: &JoinTokenRecord) -> bool {
    a.name == b.name
        && a.created_by == b.created_by
        && a.created_at == b.created_at
        && a.expires_at == b.expires_at
}

fn serials(records: &[CertificateRecord]) -> Vec<Serial> {
    records.iter().map(|r| r.serial).collect()
}

/// The stored record for `expected.serial` equals `expected`.
fn stored_as<S: Store>(store: &S, expected: &CertificateRecord) -> Result<(), Violation> {
    match store.get_certificate(&expected.serial)? {
        Some(got) => {
            promise!(
                same_cert(&got, expected),
                "certificate {} reads back as {got:?}, expected {expected:?}",
                expected.serial
            );
            Ok(())
        }
        None => Err(Violation::Broken(format!(
            "certificate {} was recorded but is not found",
            expected.serial
        ))),
    }
}

/// Nothing at all is stored for `serial`: not the record, and not in any query or index.
fn absent<S: Store>(store: &S, serial: &Serial, what: &str) -> Result<(), Violation> {
    promise!(
        store.get_certificate(serial)?.is_none(),
        "{what}: certificate {serial} must not be recorded"
    );
    let all = store.query_certificates(&query(None, None, 10_000)?)?;
    promise!(
        !all.iter().any(|r| r.serial == *serial),
        "{what}: certificate {serial} must not appear in queries"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Metadata.

/// `get_meta` answers `None` for a key never written and the last value written otherwise;
/// keys do not affect each other.
pub(crate) fn meta_values_read_back_and_keys_are_independent<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    promise!(
        s.get_meta("initialized")?.is_none(),
        "a key never written reads as None"
    );
    s.put_meta("initialized", b"1")?;
    s.put_meta("kek_check", &[0, 255, 7])?;
    s.put_meta("empty", b"")?;
    promise!(
        s.get_meta("initialized")?.as_deref() == Some(&b"1"[..]),
        "a written value reads back"
    );
    promise!(
        s.get_meta("kek_check")?.as_deref() == Some(&[0, 255, 7][..]),
        "binary values read back byte for byte"
    );
    promise!(
        s.get_meta("empty")?.as_deref() == Some(&b""[..]),
        "an empty value is stored, not the same as no value"
    );
    s.put_meta("initialized", b"2")?;
    promise!(
        s.get_meta("initialized")?.as_deref() == Some(&b"2"[..]),
        "a second put replaces the value"
    );
    promise!(
        s.get_meta("kek_check")?.as_deref() == Some(&[0, 255, 7][..]),
        "writing one key leaves another alone"
    );
    promise!(
        s.get_meta("initialize")?.is_none(),
        "a prefix of a key is a different key"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Authorities.

/// A fresh store has no generations and bundle sequence 0.
pub(crate) fn authorities_start_empty_with_sequence_zero<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let (all, seq) = s.load_authorities()?;
    promise!(
        all.is_empty() && seq == 0,
        "a fresh store loads no generations and sequence 0, got {} and {seq}",
        all.len()
    );
    Ok(())
}

/// `save_authorities` writes the changed generations and the sequence together; unchanged
/// generations stay as they were; saving none still moves the sequence.
pub(crate) fn saved_authorities_and_the_sequence_read_back_together<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let mut one = authority(1, GenerationState::Active);
    one.activated_at = Some(at(5));
    s.save_authorities(std::slice::from_ref(&one), 1, &[])?;
    let (all, seq) = s.load_authorities()?;
    promise!(
        seq == 1 && all.len() == 1 && same_authority(&all[0], &one),
        "the saved generation and sequence read back (got {} generations, sequence {seq})",
        all.len()
    );

    let two = authority(2, GenerationState::Prepared);
    s.save_authorities(std::slice::from_ref(&two), 2, &[])?;
    let (all, seq) = s.load_authorities()?;
    promise!(
        seq == 2 && all.len() == 2,
        "saving another generation keeps the first (got {} generations, sequence {seq})",
        all.len()
    );
    promise!(
        same_authority(&all[0], &one) && same_authority(&all[1], &two),
        "both generations read back as saved"
    );

    // Activation: both change in one step.
    let mut one_retiring = one.clone();
    one_retiring.state = GenerationState::Retiring;
    one_retiring.retiring_at = Some(at(50));
    let mut two_active = two.clone();
    two_active.state = GenerationState::Active;
    two_active.activated_at = Some(at(50));
    two_active.intermediates.push(ca_key(77, 200_000));
    s.save_authorities(&[one_retiring.clone(), two_active.clone()], 3, &[])?;
    let (all, seq) = s.load_authorities()?;
    promise!(
        seq == 3
            && all.len() == 2
            && same_authority(&all[0], &one_retiring)
            && same_authority(&all[1], &two_active),
        "a save of two changed generations replaces both and the sequence"
    );

    s.save_authorities(&[], 4, &[])?;
    let (all, seq) = s.load_authorities()?;
    promise!(
        seq == 4 && all.len() == 2 && same_authority(&all[1], &two_active),
        "saving no generation moves only the sequence"
    );
    Ok(())
}

/// `load_authorities` lists generations by id, oldest first, whatever order they were saved in
/// (and past 9, so an ordering by text would show).
pub(crate) fn authorities_are_listed_oldest_first<H: Harness>(h: &mut H) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    for (i, id) in [10, 2, 1, 11, 3].into_iter().enumerate() {
        s.save_authorities(
            &[authority(id, GenerationState::Retired)],
            i as u64 + 1,
            &[],
        )?;
    }
    let (all, seq) = s.load_authorities()?;
    let ids: Vec<u32> = all.iter().map(|a| a.id.0).collect();
    promise!(
        ids == [1, 2, 3, 10, 11],
        "generations load oldest first, got {ids:?}"
    );
    promise!(seq == 5, "the last sequence saved wins, got {seq}");
    Ok(())
}

/// `save_generations_if` writes only if the stored version is still the one read; then the
/// version moves on by one (as it does with `save_authorities`); a stale version is a
/// `Conflict` that writes nothing.
pub(crate) fn a_conditional_save_writes_only_over_the_version_it_read<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let fresh = s.load_generations()?;
    promise!(
        fresh.version == 0 && fresh.bundle_sequence == 0 && fresh.records.is_empty(),
        "a fresh store has version 0, sequence 0 and no generations (got version {})",
        fresh.version
    );
    s.save_authorities(&[authority(1, GenerationState::Active)], 1, &[])?;
    let read = s.load_generations()?;
    promise!(
        read.version == 1,
        "an unconditional save moves the version too, got {}",
        read.version
    );
    let two = authority(2, GenerationState::Prepared);
    let v = s.save_generations_if(std::slice::from_ref(&two), 2, read.version, &[])?;
    promise!(
        v == 2,
        "a conditional save returns the new version, got {v}"
    );
    let stale = s.save_generations_if(
        &[authority(3, GenerationState::Prepared)],
        9,
        read.version,
        &[],
    );
    promise!(
        matches!(stale, Err(StoreError::Conflict)),
        "a save over a version that moved is a Conflict, got {stale:?}"
    );
    let after = s.load_generations()?;
    let ids: Vec<u32> = after.records.iter().map(|g| g.id.0).collect();
    promise!(
        after.version == 2 && after.bundle_sequence == 2 && ids == [1, 2],
        "a refused save writes nothing (got version {}, sequence {}, ids {ids:?})",
        after.version,
        after.bundle_sequence
    );
    Ok(())
}

/// Of concurrent conditional saves over the same version, exactly one succeeds.
pub(crate) fn of_concurrent_conditional_saves_exactly_one_wins<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    const THREADS: usize = 6;
    let s = h.open_fresh()?;
    s.save_authorities(&[authority(1, GenerationState::Active)], 1, &[])?;
    let read = s.load_generations()?;
    let start = Barrier::new(THREADS);
    let answers: Vec<Result<u64, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (s, start) = (&s, &start);
                scope.spawn(move || {
                    let g = authority(10 + i as u32, GenerationState::Prepared);
                    start.wait();
                    s.save_generations_if(&[g], 2, read.version, &[])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(StoreError::Backend("a thread panicked".into())))
            })
            .collect()
    });
    let won = answers.iter().filter(|a| a.is_ok()).count();
    let lost = answers
        .iter()
        .filter(|a| matches!(a, Err(StoreError::Conflict)))
        .count();
    promise!(
        won == 1 && lost == THREADS - 1,
        "exactly one concurrent save wins and the others conflict, got {answers:?}"
    );
    let after = s.load_generations()?;
    promise!(
        after.records.len() == 2 && after.version == read.version + 1,
        "only the winner's generation is stored ({} generations, version {})",
        after.records.len(),
        after.version
    );
    Ok(())
}

/// `new_authority_id` is above every stored id and never hands out the same id twice, even
/// to concurrent callers.
pub(crate) fn new_authority_ids_are_unique_and_above_every_stored_id<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    const THREADS: usize = 4;
    const EACH: usize = 5;
    let s = h.open_fresh()?;
    s.save_authorities(&[authority(7, GenerationState::Active)], 1, &[])?;
    let ids: Vec<Result<AuthorityId, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let s = &s;
                scope.spawn(move || (0..EACH).map(|_| s.new_authority_id()).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|t| {
                t.join()
                    .unwrap_or_else(|_| vec![Err(StoreError::Backend("a thread panicked".into()))])
            })
            .collect()
    });
    let ids = ids.into_iter().collect::<Result<Vec<_>, _>>()?;
    let distinct: HashSet<u32> = ids.iter().map(|i| i.0).collect();
    promise!(
        distinct.len() == THREADS * EACH,
        "every id handed out is different, got {ids:?}"
    );
    promise!(
        distinct.iter().all(|&i| i > 7),
        "every new id is above the stored generation 7, got {ids:?}"
    );
    let max = distinct.iter().copied().max().unwrap_or(0);
    s.save_authorities(&[authority(max + 10, GenerationState::Prepared)], 2, &[])?;
    let next = s.new_authority_id()?;
    promise!(
        next.0 > max + 10,
        "a new id is above an id saved since, got {next}"
    );
    Ok(())
}

/// `insert_signed` records certificates only while their signer is stored as active; else it
/// is `NotActive` and writes nothing.
pub(crate) fn signed_certificates_are_recorded_only_while_the_signer_is_active<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    s.save_authorities(&[authority(1, GenerationState::Active)], 1, &[])?;
    let first = instance("a1", "b1", 1, 10, 1_000)?;
    s.insert_signed(AuthorityId(1), std::slice::from_ref(&first), &[])?;
    stored_as(&s, &first)?;

    let unknown = instance("a2", "b1", 5, 10, 1_000)?;
    let r = s.insert_signed(AuthorityId(5), std::slice::from_ref(&unknown), &[]);
    promise!(
        matches!(r, Err(StoreError::NotActive(AuthorityId(5)))),
        "a generation never saved signs nothing, got {r:?}"
    );
    absent(&s, &unknown.serial, "a certificate of an unknown signer")?;

    let read = s.load_generations()?;
    let mut retiring = authority(1, GenerationState::Retiring);
    retiring.retiring_at = Some(at(50));
    s.save_generations_if(
        &[retiring, authority(2, GenerationState::Active)],
        2,
        read.version,
        &[],
    )?;
    let late = instance("a3", "b1", 1, 60, 1_000)?;
    let r = s.insert_signed(AuthorityId(1), std::slice::from_ref(&late), &[]);
    promise!(
        matches!(r, Err(StoreError::NotActive(AuthorityId(1)))),
        "a generation saved as retiring signs nothing more, got {r:?}"
    );
    absent(&s, &late.serial, "a certificate of a retiring signer")?;
    let ok = instance("a4", "b1", 2, 60, 1_000)?;
    s.insert_signed(AuthorityId(2), std::slice::from_ref(&ok), &[])?;
    stored_as(&s, &ok)?;
    Ok(())
}

/// Seconds from [`at`]'s origin that are decades ahead of any test run: a binding ending
/// then is live.
const FAR: u64 = 2_000_000_000;

/// A cell's SPIFFE ID, as bindings name owners.
fn cell_id(n: u32) -> String {
    format!("spiffe://lanyard.internal/lanyard/cell/cell-{n}")
}

/// An instance certificate of `inst`/`app` requested by cell `cell`, valid until `at(end)`.
fn owned(inst: &str, app: &str, cell: u32, end: u64) -> Result<CertificateRecord, Violation> {
    let mut r = instance(inst, app, 1, 10, end)?;
    r.requested_by = cell_id(cell);
    Ok(r)
}

/// Instance records bind their instance to the requesting cell with its app, space and
/// organization, in the insert itself: another cell's record, or the owner's with another
/// app, is refused (its index answered, nothing of it written) while the rest of the call is
/// written; the owner's records extend the binding; a binding whose certificates all expired
/// is replaced; and within one call the first record for an instance decides.
pub(crate) fn the_first_cell_to_get_an_instance_owns_it<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    s.save_authorities(&[authority(1, GenerationState::Active)], 1, &[])?;
    let now = SystemTime::now();
    let first = owned("a1", "b1", 1, FAR)?;
    let refused = s.insert_signed(AuthorityId(1), std::slice::from_ref(&first), &[])?;
    promise!(refused.is_empty(), "a free instance binds, got {refused:?}");
    let theirs = owned("a1", "b1", 2, FAR)?;
    let other_app = owned("a1", "b2", 1, FAR)?;
    let again = owned("a1", "b1", 1, FAR + 10)?;
    let elsewhere = owned("a2", "b1", 2, FAR)?;
    let batch = [
        theirs.clone(),
        other_app.clone(),
        again.clone(),
        elsewhere.clone(),
    ];
    let refused = s.insert_signed(AuthorityId(1), &batch, &[])?;
    promise!(
        refused == vec![0, 1],
        "another cell and another app are refused, the owner and a free instance are not, got {refused:?}"
    );
    absent(&s, &theirs.serial, "another cell's certificate")?;
    absent(&s, &other_app.serial, "another app's certificate")?;
    stored_as(&s, &again)?;
    stored_as(&s, &elsewhere)?;
    let b = s.get_binding(&guid("a1")?, now)?;
    promise!(
        b.as_ref().map(|b| (b.owner.clone(), b.not_after)) == Some((cell_id(1), at(FAR + 10))),
        "the owner's binding lasts until its latest certificate ends, got {b:?}"
    );

    let old = owned("a3", "b1", 1, 100)?;
    s.insert_signed(AuthorityId(1), std::slice::from_ref(&old), &[])?;
    promise!(
        s.get_binding(&guid("a3")?, now)?.is_none(),
        "a binding whose certificates all expired is not live"
    );
    let next = owned("a3", "b9", 2, FAR)?;
    let refused = s.insert_signed(AuthorityId(1), std::slice::from_ref(&next), &[])?;
    promise!(
        refused.is_empty(),
        "an expired binding is replaced at the next issuance, got {refused:?}"
    );
    let b = s.get_binding(&guid("a3")?, now)?;
    promise!(
        b.as_ref().map(|b| (b.owner.clone(), b.app_guid.clone()))
            == Some((cell_id(2), guid("b9")?)),
        "the new issuance owns it, got {b:?}"
    );

    let pair = [owned("a4", "b1", 2, FAR)?, owned("a4", "b1", 3, FAR)?];
    let refused = s.insert_signed(AuthorityId(1), &pair, &[])?;
    promise!(
        refused == vec![1],
        "within one call the first record for an instance decides, got {refused:?}"
    );
    let s = h.reopen(s)?;
    let b = s.get_binding(&guid("a4")?, now)?;
    promise!(
        b.map(|b| b.owner) == Some(cell_id(2)),
        "bindings are there after reopening"
    );
    Ok(())
}

/// `release_binding` ends a live binding for its owner or for an operator (no owner), never
/// for another cell; an unbound instance is `NotBound`; a released instance is free for the
/// next issuance, by any cell.
pub(crate) fn a_binding_is_released_by_its_owner_or_by_an_operator<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    s.save_authorities(&[authority(1, GenerationState::Active)], 1, &[])?;
    let now = SystemTime::now();
    let a1 = guid("a1")?;
    s.insert_signed(AuthorityId(1), &[owned("a1", "b1", 1, FAR)?], &[])?;
    let r = s.release_binding(&a1, Some(&cell_id(2)), now, &[])?;
    promise!(
        r == ReleaseOutcome::OwnedElsewhere,
        "another cell does not release it, got {r:?}"
    );
    promise!(
        s.get_binding(&a1, now)?.is_some(),
        "a refused release changes nothing"
    );
    let r = s.release_binding(&a1, Some(&cell_id(1)), now, &[])?;
    promise!(
        matches!(&r, ReleaseOutcome::Released(b) if b.owner == cell_id(1)),
        "the owner releases it, got {r:?}"
    );
    let r = s.release_binding(&a1, Some(&cell_id(1)), now, &[])?;
    promise!(
        r == ReleaseOutcome::NotBound,
        "a second release finds nothing, got {r:?}"
    );
    let s = h.reopen(s)?;
    promise!(s.get_binding(&a1, now)?.is_none(), "a release is durable");
    let refused = s.insert_signed(AuthorityId(1), &[owned("a1", "b2", 2, FAR)?], &[])?;
    promise!(
        refused.is_empty(),
        "a released instance is free for another cell, got {refused:?}"
    );
    let r = s.release_binding(&a1, None, now, &[])?;
    promise!(
        matches!(&r, ReleaseOutcome::Released(b) if b.owner == cell_id(2)),
        "an operator releases anyone's binding, got {r:?}"
    );
    let r = s.release_binding(&guid("a7")?, None, now, &[])?;
    promise!(
        r == ReleaseOutcome::NotBound,
        "an instance never bound is not bound, got {r:?}"
    );
    Ok(())
}

/// Of concurrent first issuances for one free instance by different cells, exactly one is
/// written and owns it; the others are refused and not written.
pub(crate) fn of_concurrent_first_issuances_for_one_instance_exactly_one_owner_wins<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    const THREADS: u32 = 6;
    let s = h.open_fresh()?;
    s.save_authorities(&[authority(1, GenerationState::Active)], 1, &[])?;
    let records = (0..THREADS)
        .map(|i| owned("a1", "b1", i + 1, FAR))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Barrier::new(THREADS as usize);
    let answers: Vec<Result<Vec<usize>, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = records
            .iter()
            .map(|r| {
                let (s, start) = (&s, &start);
                scope.spawn(move || {
                    start.wait();
                    s.insert_signed(AuthorityId(1), std::slice::from_ref(r), &[])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(StoreError::Backend("a thread panicked".into())))
            })
            .collect()
    });
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a, Ok(refused) if refused.is_empty()))
        .map(|(i, _)| i)
        .collect();
    let losers = answers
        .iter()
        .filter(|a| matches!(a, Ok(refused) if refused == &vec![0]))
        .count();
    promise!(
        winners.len() == 1 && losers == THREADS as usize - 1,
        "exactly one cell wins the instance and the others are refused, got {answers:?}"
    );
    let winner = &records[winners[0]];
    let b = s.get_binding(&guid("a1")?, SystemTime::now())?;
    promise!(
        b.map(|b| b.owner) == Some(winner.requested_by.clone()),
        "the winner owns it"
    );
    for (i, r) in records.iter().enumerate() {
        if i == winners[0] {
            stored_as(&s, r)?;
        } else {
            absent(&s, &r.serial, "a refused concurrent issuance")?;
        }
    }
    Ok(())
}

/// A group write (the issuing thread's: the items of several callers in one
/// `insert_signed`) writes every item with its audit entry and its binding, except the one
/// refused for an instance bound elsewhere, whose refusal does not fail the others; the audit
/// entries of the written items are appended in item order; all of it is there after a
/// reopen.
pub(crate) fn a_group_write_records_every_callers_items_but_the_refused_one<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    s.save_authorities(&[authority(1, GenerationState::Active)], 1, &[])?;
    let earlier = owned("c1", "b1", 1, FAR)?;
    s.insert_signed(AuthorityId(1), std::slice::from_ref(&earlier), &[])?;
    // Cell 1's two instances, cell 2's instance, a credential, and cell 3 asking for cell 1's
    // instance (refused), from five callers.
    let group = [
        owned("c2", "b1", 1, FAR)?,
        owned("c3", "b2", 2, FAR)?,
        owned("c1", "b1", 3, FAR)?,
        credential("cell-9", 1, 10, FAR)?,
        owned("c4", "b1", 1, FAR)?,
    ];
    let events: Vec<AuditEvent> = (0..group.len())
        .map(|i| event(&format!("item-{i}")))
        .collect();
    let refused = s.insert_signed(AuthorityId(1), &group, &events)?;
    promise!(
        refused == vec![2],
        "only the item for an instance bound elsewhere is refused, got {refused:?}"
    );
    let check = |s: &H::Store| -> Result<(), Violation> {
        for (i, r) in group.iter().enumerate() {
            if i == 2 {
                absent(s, &r.serial, "the refused item")?;
            } else {
                stored_as(s, r)?;
            }
        }
        let now = SystemTime::now();
        for (inst, cell) in [("c1", 1), ("c2", 1), ("c3", 2), ("c4", 1)] {
            let b = s.get_binding(&guid(inst)?, now)?;
            promise!(
                b.as_ref().map(|b| b.owner.clone()) == Some(cell_id(cell)),
                "instance {inst} is bound to cell {cell}, got {b:?}"
            );
        }
        let got = whole_chain(s)?;
        promise!(
            got == ["item-0", "item-1", "item-3", "item-4"],
            "the written items' entries, in item order, got {got:?}"
        );
        Ok(())
    };
    check(&s)?;
    let s = h.reopen(s)?;
    check(&s)
}

/// A group write that fails (one item's serial is already recorded) writes nothing of any
/// item: no record, no binding, no audit entry; so no caller of the group may be answered.
pub(crate) fn a_failed_group_write_records_nothing_of_any_item<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    s.save_authorities(&[authority(1, GenerationState::Active)], 1, &[])?;
    let taken = credential("cell-1", 1, 10, FAR)?;
    s.insert_signed(
        AuthorityId(1),
        std::slice::from_ref(&taken),
        &[event("taken")],
    )?;
    let mut clash = credential("cell-2", 1, 10, FAR)?;
    clash.serial = taken.serial;
    let group = [
        owned("d1", "b1", 1, FAR)?,
        clash,
        owned("d2", "b1", 2, FAR)?,
    ];
    let events: Vec<AuditEvent> = (0..group.len())
        .map(|i| event(&format!("item-{i}")))
        .collect();
    let r = s.insert_signed(AuthorityId(1), &group, &events);
    promise!(
        matches!(r, Err(StoreError::SerialExists(_))),
        "a taken serial fails the group write, got {r:?}"
    );
    for r in [&group[0], &group[2]] {
        absent(&s, &r.serial, "an item of the failed group")?;
    }
    let now = SystemTime::now();
    for inst in ["d1", "d2"] {
        promise!(
            s.get_binding(&guid(inst)?, now)?.is_none(),
            "no instance of the failed group is bound ({inst})"
        );
    }
    let got = whole_chain(&s)?;
    promise!(
        got == ["taken"],
        "no entry of the failed group, got {got:?}"
    );
    Ok(())
}

/// An audit event naming `subject`.
fn event(subject: &str) -> AuditEvent {
    AuditEvent::new("test", "test.changed", subject, serde_json::json!({"n": 1}))
}

/// Every audit entry in order, checked as a chain: seq 1, 2, ... and every link and hash.
fn whole_chain<S: Store>(s: &S) -> Result<Vec<String>, Violation> {
    let mut v = Verifier::new();
    let mut subjects = Vec::new();
    let mut after = 0;
    loop {
        let page = s.audit_after(after, 7)?;
        if page.entries.is_empty() {
            break;
        }
        for e in &page.entries {
            v.check(e)
                .map_err(|b| Violation::Broken(format!("the audit chain does not verify: {b}")))?;
            subjects.push(e.subject.clone());
        }
        promise!(page.next > after, "audit pages move forward");
        after = page.next;
    }
    let last = s.audit_after(0, 1)?.last;
    promise!(
        last == v.verified(),
        "the log's last position ({last}) is its last seq ({})",
        v.verified()
    );
    Ok(subjects)
}

/// The write methods that take audit events append them in the same write as their
/// change, and only when the change happens (a refused record, a revoke already done, a
/// token already taken, a release that releases nothing append nothing); the entries form
/// one chain from seq 1 that is still whole after reopening, and appends after reopening
/// continue it.
pub(crate) fn audit_entries_are_written_with_their_change_and_chain<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    promise!(
        s.audit_after(0, 10)?.entries.is_empty(),
        "a fresh store has an empty audit log"
    );
    s.save_authorities(
        &[authority(1, GenerationState::Active)],
        1,
        &[event("gen-1")],
    )?;
    let a = owned("a1", "b1", 1, FAR)?;
    let refused = owned("a1", "b1", 2, FAR)?;
    let b = owned("a2", "b1", 1, FAR)?;
    s.insert_signed(
        AuthorityId(1),
        &[a.clone(), refused, b.clone()],
        &[event("cert-a"), event("cert-refused"), event("cert-b")],
    )?;
    s.revoke(&a.serial, at(50), None, &[event("revoke-a")])?;
    s.revoke(&a.serial, at(60), None, &[event("revoke-a-again")])?;
    s.insert_join_token(b"t1", &token("cell-1", 900)?, &[event("token-created")])?;
    s.take_join_token(b"t1", &[event("token-used")])?;
    s.take_join_token(b"t1", &[event("token-used-again")])?;
    s.release_binding(
        &guid("a9")?,
        None,
        SystemTime::now(),
        &[event("release-none")],
    )?;
    s.release_binding(
        &guid("a2")?,
        None,
        SystemTime::now(),
        &[event("release-a2")],
    )?;
    let read = s.load_generations()?;
    s.save_generations_if(
        &[authority(2, GenerationState::Prepared)],
        2,
        read.version,
        &[event("gen-2")],
    )?;
    s.append_audit(&[event("start")])?;
    let expected: Vec<String> = [
        "gen-1",
        "cert-a",
        "cert-b",
        "revoke-a",
        "token-created",
        "token-used",
        "release-a2",
        "gen-2",
        "start",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let got = whole_chain(&s)?;
    promise!(
        got == expected,
        "the entries are {got:?}, expected {expected:?}"
    );
    let s = h.reopen(s)?;
    s.append_audit(&[event("after-reopen-1"), event("after-reopen-2")])?;
    let got = whole_chain(&s)?;
    promise!(
        got.len() == expected.len() + 2 && got.last().map(String::as_str) == Some("after-reopen-2"),
        "appends after reopening continue the chain, got {got:?}"
    );
    let page = s.audit_after(3, 2)?;
    promise!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>() == vec![4, 5] && page.next == 5,
        "a page starts after `after` and names its last seq, got {:?}",
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>()
    );

    // A copy: entries as they are, and the bindings.
    let copy = h.open_fresh()?;
    let all = s.audit_after(0, 1000)?.entries;
    promise!(
        copy.import_audit(&all[1..]).is_err() && copy.audit_after(0, 10)?.entries.is_empty(),
        "an import that does not continue the chain is refused and writes nothing"
    );
    copy.import_audit(&all[..3])?;
    copy.import_audit(&all[3..])?;
    promise!(
        whole_chain(&copy)? == got,
        "an imported chain reads back the same and verifies"
    );
    copy.append_audit(&[event("after-copy")])?;
    whole_chain(&copy)?;
    let bindings = s.all_bindings()?;
    promise!(
        bindings.len() == 1,
        "one binding is left (a1), got {bindings:?}"
    );
    copy.import_bindings(&bindings)?;
    let mut copied = copy.all_bindings()?;
    copied.sort_by(|a, b| a.instance_guid.cmp(&b.instance_guid));
    promise!(
        copied == bindings,
        "bindings copy as they are, got {copied:?}"
    );
    Ok(())
}

/// Of many writers appending at once (issuances and plain appends, several entries per
/// write), every entry lands in one gapless chain that verifies.
pub(crate) fn of_concurrent_appends_the_audit_chain_stays_gapless<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    const THREADS: usize = 6;
    const ROUNDS: usize = 15;
    let s = h.open_fresh()?;
    s.save_authorities(&[authority(1, GenerationState::Active)], 1, &[])?;
    let start = Barrier::new(THREADS);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (s, start) = (&s, &start);
                scope.spawn(move || -> Result<(), String> {
                    start.wait();
                    for r in 0..ROUNDS {
                        if (t + r) % 2 == 0 {
                            let recs = [
                                owned(&format!("c{t}a{r}"), "b1", 1, FAR)
                                    .map_err(|e| e.to_string())?,
                                owned(&format!("c{t}b{r}"), "b1", 1, FAR)
                                    .map_err(|e| e.to_string())?,
                            ];
                            let events =
                                [event(&format!("{t}/{r}/a")), event(&format!("{t}/{r}/b"))];
                            s.insert_signed(AuthorityId(1), &recs, &events)
                                .map_err(|e| e.to_string())?;
                        } else {
                            s.append_audit(&[
                                event(&format!("{t}/{r}/a")),
                                event(&format!("{t}/{r}/b")),
                            ])
                            .map_err(|e| e.to_string())?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|t| match t.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("a thread panicked".into()),
            })
            .collect()
    });
    promise!(
        failures.is_empty(),
        "every append succeeds, got {failures:?}"
    );
    let subjects = whole_chain(&s)?;
    promise!(
        subjects.len() == THREADS * ROUNDS * 2,
        "every entry is in the chain once: {} of {}",
        subjects.len(),
        THREADS * ROUNDS * 2
    );
    let unique: HashSet<&String> = subjects.iter().collect();
    promise!(unique.len() == subjects.len(), "no entry is written twice");
    Ok(())
}

/// `lock_init` has one holder at a time: a second caller waits until the first drops it.
pub(crate) fn the_init_lock_has_one_holder_at_a_time<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let s = h.open_fresh()?;
    let first = s.lock_init()?;
    let second_holds = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<(), Violation> {
        let waiter = scope.spawn(|| -> Result<(), StoreError> {
            let _second = s.lock_init()?;
            second_holds.store(true, Ordering::SeqCst);
            Ok(())
        });
        std::thread::sleep(Duration::from_millis(400));
        promise!(
            !second_holds.load(Ordering::SeqCst),
            "a second caller got the init lock while the first held it"
        );
        drop(first);
        waiter
            .join()
            .map_err(|_| Violation::Setup("the waiting thread panicked".into()))??;
        promise!(
            second_holds.load(Ordering::SeqCst),
            "the second caller gets the init lock once the first drops it"
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// Certificates.

/// Every field of an inserted record reads back; an unknown serial reads as `None`.
pub(crate) fn inserted_certificates_read_back_field_for_field<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let a = instance("a1", "b1", 1, 10, 100)?;
    let b = credential("cell-1", 1, 11, 200)?;
    let mut c = instance("a2", "b1", 2, 12, 300)?;
    c.revoked_at = Some(at(20));
    c.revocation_reason = Some("key compromise".into());
    s.insert_certificates(&[a.clone(), b.clone()])?;
    s.insert_certificates(std::slice::from_ref(&c))?;
    s.insert_certificates(&[])?;
    for r in [&a, &b, &c] {
        stored_as(&s, r)?;
    }
    promise!(
        s.get_certificate(&serial()?)?.is_none(),
        "an unknown serial reads as None"
    );
    Ok(())
}

/// `insert_certificates` with a serial already recorded fails with `SerialExists` and writes
/// none of the batch: no record, no query hit, no effect on `last_leaf_not_after`; the record
/// already there is not replaced.
pub(crate) fn a_taken_serial_fails_the_whole_batch_and_writes_nothing<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let first = instance("a1", "b1", 1, 10, 100)?;
    s.insert_certificates(std::slice::from_ref(&first))?;

    // The taken serial in the middle of the batch, then first.
    for position in [1, 0, 2] {
        let mut batch = vec![
            instance("a2", "b2", 1, 20, 5_000)?,
            credential("cell-2", 1, 21, 6_000)?,
        ];
        let mut dup = instance("a3", "b3", 1, 22, 7_000)?;
        dup.serial = first.serial;
        dup.requested_by = "someone else".into();
        batch.insert(position, dup);
        match s.insert_certificates(&batch) {
            Err(StoreError::SerialExists(taken)) => promise!(
                taken == first.serial,
                "SerialExists names the taken serial {}, got {taken}",
                first.serial
            ),
            Err(e) => return Err(e.into()),
            Ok(()) => {
                return Err(Violation::Broken(format!(
                    "a batch with a taken serial (at position {position}) was accepted"
                )))
            }
        }
        for r in batch.iter().filter(|r| r.serial != first.serial) {
            absent(&s, &r.serial, "a failed batch")?;
        }
        stored_as(&s, &first)?;
        let by_instance = s.query_certificates(&query(Some("a3"), None, 100)?)?;
        promise!(
            by_instance.is_empty(),
            "a failed batch leaves nothing in the instance index"
        );
        let last = s.last_leaf_not_after(AuthorityId(1))?;
        promise!(
            last == Some(at(100)),
            "a failed batch does not move last_leaf_not_after (got {last:?})"
        );
    }
    Ok(())
}

/// A batch that names one serial twice fails with `SerialExists` and writes nothing.
pub(crate) fn a_serial_repeated_within_one_batch_fails_and_writes_nothing<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let a = instance("a1", "b1", 1, 10, 100)?;
    let b = instance("a2", "b1", 1, 11, 200)?;
    let mut again = instance("a3", "b1", 1, 12, 300)?;
    again.serial = a.serial;
    match s.insert_certificates(&[a.clone(), b.clone(), again]) {
        Err(StoreError::SerialExists(taken)) => {
            promise!(taken == a.serial, "SerialExists names the repeated serial")
        }
        Err(e) => return Err(e.into()),
        Ok(()) => {
            return Err(Violation::Broken(
                "a batch naming one serial twice was accepted".into(),
            ))
        }
    }
    absent(&s, &a.serial, "a batch with a repeated serial")?;
    absent(&s, &b.serial, "a batch with a repeated serial")?;
    promise!(
        s.last_leaf_not_after(AuthorityId(1))?.is_none(),
        "a failed batch does not set last_leaf_not_after"
    );
    // The serial is still free.
    s.insert_certificates(std::slice::from_ref(&a))?;
    stored_as(&s, &a)?;
    Ok(())
}

/// `update_certificate` replaces the record (revocation and back); the record stays findable
/// by its instance and app, once; `revoked` follows the record.
pub(crate) fn updating_a_certificate_replaces_it_and_keeps_it_findable<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let mut r = instance("a1", "b1", 1, 10, 100)?;
    let other = instance("a1", "b1", 1, 11, 100)?;
    s.insert_certificates(&[r.clone(), other.clone()])?;
    r.revoked_at = Some(at(50));
    r.revocation_reason = Some("superseded".into());
    s.update_certificate(&r)?;
    stored_as(&s, &r)?;
    stored_as(&s, &other)?;
    let found = s.query_certificates(&query(Some("a1"), Some("b1"), 100)?)?;
    promise!(
        serials(&found) == [other.serial, r.serial],
        "an updated record is found once by its instance and app"
    );
    promise!(
        found.get(1).is_some_and(|f| same_cert(f, &r)),
        "queries answer the updated record"
    );
    let revoked = s.revoked(AuthorityId(1))?;
    promise!(
        revoked == [(r.serial, at(50))],
        "revoked lists the revocation, got {revoked:?}"
    );

    r.revoked_at = None;
    r.revocation_reason = None;
    s.update_certificate(&r)?;
    stored_as(&s, &r)?;
    promise!(
        s.revoked(AuthorityId(1))?.is_empty(),
        "revoked follows the record when a revocation is undone"
    );
    Ok(())
}

/// `update_certificate` of a serial never recorded fails with `NotFound` and records nothing.
pub(crate) fn updating_an_unknown_serial_fails_and_writes_nothing<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let mut r = instance("a1", "b1", 1, 10, 100)?;
    r.revoked_at = Some(at(20));
    match s.update_certificate(&r) {
        Err(StoreError::NotFound(missing)) => {
            promise!(missing == r.serial, "NotFound names the serial")
        }
        Err(e) => return Err(e.into()),
        Ok(()) => {
            return Err(Violation::Broken(
                "updating a serial never recorded succeeded".into(),
            ))
        }
    }
    absent(&s, &r.serial, "a failed update")?;
    promise!(
        s.revoked(AuthorityId(1))?.is_empty(),
        "a failed update records no revocation"
    );
    Ok(())
}

/// `revoke` sets the record's time and reason and lists it in `revoked` in one step, which
/// is still there after a reopen; other records stay as they were.
pub(crate) fn a_revoke_writes_the_record_and_the_index_together_and_survives_a_reopen<
    H: Harness,
>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let r = instance("a1", "b1", 1, 10, 100)?;
    let other = instance("a1", "b1", 1, 11, 100)?;
    s.insert_certificates(&[r.clone(), other.clone()])?;
    let mut expected = r.clone();
    expected.revoked_at = Some(at(50));
    expected.revocation_reason = Some("key compromise".into());
    match s.revoke(&r.serial, at(50), Some("key compromise"), &[])? {
        RevokeOutcome::Revoked(got) => promise!(
            same_cert(&got, &expected),
            "revoke answers the revoked record, got {got:?}"
        ),
        RevokeOutcome::AlreadyRevoked(got) => {
            return Err(Violation::Broken(format!(
                "a first revoke answered AlreadyRevoked with {got:?}"
            )))
        }
    }
    let s = h.reopen(s)?;
    stored_as(&s, &expected)?;
    stored_as(&s, &other)?;
    let revoked = s.revoked(AuthorityId(1))?;
    promise!(
        revoked == [(r.serial, at(50))],
        "revoked lists the revocation after a reopen, got {revoked:?}"
    );
    let found = s.query_certificates(&query(Some("a1"), Some("b1"), 100)?)?;
    promise!(
        serials(&found) == [other.serial, r.serial],
        "a revoked record is found once by its instance and app"
    );
    Ok(())
}

/// Revoking a revoked certificate again answers `AlreadyRevoked` with the record as it is:
/// the first time and reason stay, and `revoked` lists it once.
pub(crate) fn revoking_again_leaves_the_first_revocation_as_it_is<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let r = instance("a1", "b1", 1, 10, 100)?;
    s.insert_certificates(std::slice::from_ref(&r))?;
    let first = s
        .revoke(&r.serial, at(50), Some("first"), &[])?
        .into_record();
    match s.revoke(&r.serial, at(60), Some("second"), &[])? {
        RevokeOutcome::AlreadyRevoked(got) => promise!(
            same_cert(&got, &first),
            "a second revoke answers the record as the first left it, got {got:?}"
        ),
        RevokeOutcome::Revoked(got) => {
            return Err(Violation::Broken(format!(
                "a second revoke revoked again: {got:?}"
            )))
        }
    }
    let s = h.reopen(s)?;
    stored_as(&s, &first)?;
    let revoked = s.revoked(AuthorityId(1))?;
    promise!(
        revoked == [(r.serial, at(50))],
        "revoked lists the first revocation once, got {revoked:?}"
    );
    Ok(())
}

/// Of concurrent revokes of one serial (different times), exactly one revokes it; the others
/// answer `AlreadyRevoked` with the winner's record, which is what is stored and listed.
pub(crate) fn of_concurrent_revokes_of_one_serial_exactly_one_revokes_it<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    const THREADS: usize = 6;
    let s = h.open_fresh()?;
    let r = instance("a1", "b1", 1, 10, 100)?;
    s.insert_certificates(std::slice::from_ref(&r))?;
    let start = Barrier::new(THREADS);
    let answers: Vec<Result<RevokeOutcome, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (s, start, serial) = (&s, &start, r.serial);
                scope.spawn(move || {
                    start.wait();
                    s.revoke(&serial, at(50 + i as u64), None, &[])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(StoreError::Backend("a thread panicked".into())))
            })
            .collect()
    });
    let mut winners = Vec::new();
    let mut answered = Vec::new();
    for a in answers {
        match a? {
            RevokeOutcome::Revoked(rec) => winners.push(rec),
            RevokeOutcome::AlreadyRevoked(rec) => answered.push(rec),
        }
    }
    promise!(
        winners.len() == 1,
        "{} of {THREADS} concurrent revokes revoked it",
        winners.len()
    );
    let Some(winner) = winners.first() else {
        return Ok(());
    };
    promise!(
        answered.iter().all(|a| same_cert(a, winner)),
        "every other revoke answers the winner's record"
    );
    stored_as(&s, winner)?;
    let revoked = s.revoked(AuthorityId(1))?;
    let winner_at = winner.revoked_at.unwrap_or(at(0));
    promise!(
        revoked == [(r.serial, winner_at)],
        "revoked lists the winner's revocation once, got {revoked:?}"
    );
    Ok(())
}

/// `revoke` of a serial never recorded fails with `NotFound` and records nothing.
pub(crate) fn revoking_an_unknown_serial_fails_and_writes_nothing<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let r = instance("a1", "b1", 1, 10, 100)?;
    match s.revoke(&r.serial, at(20), None, &[]) {
        Err(StoreError::NotFound(missing)) => {
            promise!(missing == r.serial, "NotFound names the serial")
        }
        Err(e) => return Err(e.into()),
        Ok(o) => {
            return Err(Violation::Broken(format!(
                "revoking a serial never recorded succeeded: {o:?}"
            )))
        }
    }
    absent(&s, &r.serial, "a failed revoke")?;
    promise!(
        s.revoked(AuthorityId(1))?.is_empty(),
        "a failed revoke records no revocation"
    );
    Ok(())
}

/// Queries filter by instance, by app, by both (and), or not at all.
pub(crate) fn queries_filter_by_instance_and_app<H: Harness>(h: &mut H) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let a1b1 = instance("a1", "b1", 1, 10, 100)?;
    let a1b2 = instance("a1", "b2", 1, 11, 100)?;
    let a2b2 = instance("a2", "b2", 1, 12, 100)?;
    // A GUID that extends another must not match it.
    let a11b1 = instance("a1-1", "b1-1", 1, 13, 100)?;
    let cell = credential("cell-1", 1, 14, 100)?;
    s.insert_certificates(&[a1b1.clone(), a1b2.clone(), a2b2.clone()])?;
    s.insert_certificates(&[a11b1.clone(), cell.clone()])?;

    let cases: [(Option<&str>, Option<&str>, Vec<Serial>); 7] = [
        (Some("a1"), None, vec![a1b2.serial, a1b1.serial]),
        (Some("a2"), None, vec![a2b2.serial]),
        (None, Some("b2"), vec![a2b2.serial, a1b2.serial]),
        (None, Some("b1"), vec![a1b1.serial]),
        (Some("a1"), Some("b2"), vec![a1b2.serial]),
        (Some("a2"), Some("b1"), vec![]),
        (Some("ffff"), None, vec![]),
    ];
    for (i, a, expected) in cases {
        let got = serials(&s.query_certificates(&query(i, a, 100)?)?);
        promise!(
            got == expected,
            "query instance={i:?} app={a:?} answers {got:?}, expected {expected:?}"
        );
    }
    let all = s.query_certificates(&query(None, None, 100)?)?;
    promise!(
        serials(&all)
            == [
                cell.serial,
                a11b1.serial,
                a2b2.serial,
                a1b2.serial,
                a1b1.serial
            ],
        "a query without filters answers every record, credentials included"
    );
    Ok(())
}

/// Queries answer the newest records first (latest notBefore), at most `limit` of them, and
/// the limit keeps the newest, not the first inserted.
pub(crate) fn queries_answer_newest_first_within_the_limit<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let mut by_age = Vec::new();
    for nb in 0..6u64 {
        by_age.push(instance("a1", "b1", 1, 100 + nb * 10, 10_000)?);
    }
    // Inserted out of order, across batches.
    let order = [3usize, 0, 5, 1, 4, 2];
    s.insert_certificates(&[by_age[order[0]].clone(), by_age[order[1]].clone()])?;
    for &i in &order[2..] {
        s.insert_certificates(std::slice::from_ref(&by_age[i]))?;
    }
    let newest: Vec<Serial> = by_age.iter().rev().map(|r| r.serial).collect();

    for (i, a) in [
        (None, None),
        (Some("a1"), None),
        (None, Some("b1")),
        (Some("a1"), Some("b1")),
    ] {
        for limit in [0usize, 1, 3, 6, 100] {
            let got = serials(&s.query_certificates(&query(i, a, limit)?)?);
            let expected = &newest[..limit.min(newest.len())];
            promise!(
                got == expected,
                "query instance={i:?} app={a:?} limit={limit} answers {got:?}, expected the \
                 newest first {expected:?}"
            );
        }
    }
    Ok(())
}

/// Paging with a cursor (the position of the last record of a page) visits every matching
/// record once, in the newest-first order, whatever the page size and filters; records with
/// the same notBefore are ordered by serial, and a cursor may be any record's position.
pub(crate) fn pages_after_a_cursor_visit_every_record_once_in_order<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let mut records = Vec::new();
    // Three records share one notBefore, so the serial decides among them.
    for nb in [10u64, 20, 30, 30, 30, 40, 50] {
        records.push(instance("a1", "b1", 1, nb, 10_000)?);
    }
    records.push(instance("a2", "b1", 1, 35, 10_000)?);
    records.push(instance("a3", "b3", 1, 25, 10_000)?);
    records.push(credential("cell-1", 1, 45, 10_000)?);
    for r in &records {
        s.insert_certificates(std::slice::from_ref(r))?;
    }
    let mut newest_first = records.clone();
    newest_first.sort_by_key(|r| std::cmp::Reverse((r.not_before, r.serial)));
    for (i, a) in [
        (None, None),
        (Some("a1"), None),
        (None, Some("b1")),
        (Some("a1"), Some("b1")),
    ] {
        let q = query(i, a, 100)?;
        let expected: Vec<Serial> = newest_first
            .iter()
            .filter(|r| q.admits(r))
            .map(|r| r.serial)
            .collect();
        for size in [1usize, 2, 3] {
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = s.query_certificates(&CertificateQuery {
                    after,
                    limit: size,
                    ..q.clone()
                })?;
                promise!(
                    page.len() <= size,
                    "a page of {size} answered {}",
                    page.len()
                );
                let Some(last) = page.last() else { break };
                after = Some(CertificateCursor::of(last));
                got.extend(serials(&page));
                promise!(got.len() <= expected.len(), "paging does not end: {got:?}");
            }
            promise!(
                got == expected,
                "paging instance={i:?} app={a:?} by {size} visits {got:?}, expected {expected:?}"
            );
        }
        // A cursor at a record the filters leave out still marks a place in the order.
        let other = newest_first
            .iter()
            .find(|r| r.instance_guid.as_ref().map(|g| g.as_str()) == Some("a2"))
            .ok_or_else(|| Violation::Setup("no a2 record".into()))?;
        let c = CertificateCursor::of(other);
        let got = serials(&s.query_certificates(&CertificateQuery {
            after: Some(c),
            ..q.clone()
        })?);
        let expected: Vec<Serial> = newest_first
            .iter()
            .filter(|r| q.admits(r) && c.precedes(r))
            .map(|r| r.serial)
            .collect();
        promise!(
            got == expected,
            "after a2's record, instance={i:?} app={a:?} answers {got:?}, expected {expected:?}"
        );
    }
    Ok(())
}

/// A query by serial answers that one record, only if it also passes the other filters
/// (instance, app, cursor), and nothing for a serial never recorded.
pub(crate) fn a_query_by_serial_answers_that_record_if_it_passes_the_other_filters<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let a = instance("a1", "b1", 1, 10, 100)?;
    let b = instance("a2", "b2", 1, 20, 100)?;
    s.insert_certificates(&[a.clone(), b.clone()])?;
    let by_serial = |serial: Serial, i: Option<&str>, app: Option<&str>| -> Result<_, Violation> {
        Ok(serials(&s.query_certificates(&CertificateQuery {
            serial: Some(serial),
            ..query(i, app, 100)?
        })?))
    };
    promise!(
        by_serial(a.serial, None, None)? == [a.serial],
        "serial of a"
    );
    promise!(
        by_serial(b.serial, None, Some("b2"))? == [b.serial],
        "serial of b in b2"
    );
    promise!(
        by_serial(a.serial, Some("a1"), Some("b1"))? == [a.serial],
        "a in a1/b1"
    );
    promise!(
        by_serial(a.serial, None, Some("b2"))?.is_empty(),
        "a is not in app b2"
    );
    promise!(
        by_serial(a.serial, Some("a2"), None)?.is_empty(),
        "a is not instance a2"
    );
    promise!(
        by_serial(serial()?, None, None)?.is_empty(),
        "an unknown serial"
    );
    let past_b = s.query_certificates(&CertificateQuery {
        serial: Some(b.serial),
        after: Some(CertificateCursor::of(&a)),
        ..query(None, None, 100)?
    })?;
    promise!(
        past_b.is_empty(),
        "b is newer than a, so not after a's position"
    );
    Ok(())
}

/// `expired_certificates` lists what expired before a time, earliest first, within its
/// limit; `delete_expired_certificates` deletes those records (and only expired ones) so that
/// no query, revocation list or copy finds them, appends its audit event only when it
/// deletes, keeps the audit chain whole and each generation's latest notAfter, and the
/// deletion survives a reopen.
pub(crate) fn expired_records_are_found_by_expiry_and_deleted_with_their_indexes<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let e1 = instance("a1", "b1", 1, 10, 100)?;
    let e2 = instance("a1", "b1", 1, 20, 200)?;
    let e3 = instance("a2", "b1", 1, 30, 200)?;
    let e4 = credential("cell-1", 2, 40, 300)?;
    let live = instance("a1", "b1", 1, 50, 1_000)?;
    s.insert_certificates(&[e1.clone(), e2.clone(), e3.clone(), e4.clone(), live.clone()])?;
    s.revoke(&e3.serial, at(150), None, &[event("revoke-e3")])?;

    promise!(
        s.expired_certificates(at(100), 10)?.is_empty(),
        "a record expiring at the time has not expired before it"
    );
    promise!(
        s.expired_certificates(at(101), 10)? == [e1.serial],
        "only e1 expired before 101"
    );
    let mut same_time = [e2.serial, e3.serial];
    same_time.sort();
    let expected = [e1.serial, same_time[0], same_time[1], e4.serial];
    promise!(
        s.expired_certificates(at(500), 10)? == expected,
        "earliest expiry first (then serial)"
    );
    promise!(
        s.expired_certificates(at(500), 2)? == expected[..2],
        "at most the limit, from the earliest"
    );

    let unknown = serial()?;
    promise!(
        s.delete_expired_certificates(&[live.serial, unknown], at(500), &[event("nothing")])? == 0,
        "a live record and an unknown serial are not deleted"
    );
    let mut asked = expected.to_vec();
    asked.push(live.serial);
    let deleted = s.delete_expired_certificates(&asked, at(500), &[event("purged")])?;
    promise!(
        deleted == 4,
        "deleted {deleted} records, expected the 4 expired"
    );
    let check = |s: &H::Store| -> Result<(), Violation> {
        for r in [&e1, &e2, &e3, &e4] {
            absent(s, &r.serial, "a deleted record")?;
        }
        stored_as(s, &live)?;
        for (i, a) in [(None, None), (Some("a1"), None), (None, Some("b1"))] {
            let got = serials(&s.query_certificates(&query(i, a, 100)?)?);
            promise!(
                got == [live.serial],
                "query instance={i:?} app={a:?} after deletion answers {got:?}"
            );
        }
        promise!(
            s.revoked(AuthorityId(1))?.is_empty(),
            "a deleted revoked record leaves the revocation list"
        );
        promise!(
            s.expired_certificates(at(500), 10)?.is_empty(),
            "deleted records leave the expiry index"
        );
        promise!(
            s.last_leaf_not_after(AuthorityId(2))? == Some(at(300)),
            "a generation's latest notAfter stays after its records are deleted"
        );
        promise!(
            s.last_leaf_not_after(AuthorityId(1))? == Some(at(1_000)),
            "generation 1's latest notAfter is its live record's"
        );
        let all = s.certificates_after(None, 100)?;
        promise!(
            serials(&all) == [live.serial],
            "a copy of the store finds only the live record"
        );
        let subjects = whole_chain(s)?;
        promise!(
            subjects == ["revoke-e3", "purged"],
            "the audit log keeps every entry and gains only the deletion's: {subjects:?}"
        );
        Ok(())
    };
    check(&s)?;
    let s = h.reopen(s)?;
    check(&s)?;
    Ok(())
}

/// `revoked` lists serial and revocation time of the revoked certificates of one generation,
/// and nothing of other generations or of certificates not revoked.
pub(crate) fn revoked_lists_the_revocations_of_that_generation_only<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    let g1a = instance("a1", "b1", 1, 10, 100)?;
    let g1b = credential("cell-1", 1, 11, 100)?;
    let g1c = instance("a2", "b1", 1, 12, 100)?;
    let g2a = instance("a3", "b1", 2, 13, 100)?;
    s.insert_certificates(&[g1a.clone(), g1b.clone(), g1c.clone(), g2a.clone()])?;
    promise!(
        s.revoked(AuthorityId(1))?.is_empty(),
        "nothing is revoked before a revocation"
    );
    let revoke = |mut r: CertificateRecord, when: u64| -> Result<(), Violation> {
        r.revoked_at = Some(at(when));
        s.update_certificate(&r)?;
        Ok(())
    };
    revoke(g1a.clone(), 40)?;
    revoke(g1b.clone(), 41)?;
    revoke(g2a.clone(), 42)?;

    let mut one = s.revoked(AuthorityId(1))?;
    one.sort();
    let mut expected = vec![(g1a.serial, at(40)), (g1b.serial, at(41))];
    expected.sort();
    promise!(
        one == expected,
        "revoked(1) answers {one:?}, expected {expected:?}"
    );
    let two = s.revoked(AuthorityId(2))?;
    promise!(two == [(g2a.serial, at(42))], "revoked(2) answers {two:?}");
    promise!(
        s.revoked(AuthorityId(3))?.is_empty(),
        "a generation that signed nothing has no revocations"
    );
    Ok(())
}

/// `last_leaf_not_after` is the latest notAfter among every certificate a generation signed
/// (credentials included), `None` before the first; an earlier one does not lower it, and a
/// revocation does not change it.
pub(crate) fn last_leaf_not_after_is_the_latest_of_each_generation<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    promise!(
        s.last_leaf_not_after(AuthorityId(1))?.is_none(),
        "a generation that signed nothing has no last notAfter"
    );
    let g1 = instance("a1", "b1", 1, 10, 1_000)?;
    s.insert_certificates(std::slice::from_ref(&g1))?;
    s.insert_certificates(&[
        instance("a2", "b1", 1, 11, 500)?,
        instance("a3", "b1", 2, 12, 9_000)?,
    ])?;
    let got = s.last_leaf_not_after(AuthorityId(1))?;
    promise!(
        got == Some(at(1_000)),
        "an earlier notAfter does not lower it (got {got:?})"
    );
    let cell = credential("cell-1", 1, 13, 3_000)?;
    s.insert_certificates(std::slice::from_ref(&cell))?;
    let got = s.last_leaf_not_after(AuthorityId(1))?;
    promise!(
        got == Some(at(3_000)),
        "credentials count like instance certificates (got {got:?})"
    );
    let got = s.last_leaf_not_after(AuthorityId(2))?;
    promise!(
        got == Some(at(9_000)),
        "each generation has its own (got {got:?})"
    );
    let mut revoked = cell.clone();
    revoked.revoked_at = Some(at(20));
    s.update_certificate(&revoked)?;
    let got = s.last_leaf_not_after(AuthorityId(1))?;
    promise!(
        got == Some(at(3_000)),
        "a revocation does not change it (got {got:?})"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Join tokens.

/// A join token reads back under its hash as often as asked; `take` answers it once and
/// then `None`, and afterwards it cannot be read either. Tokens do not affect each other.
pub(crate) fn a_join_token_is_read_without_spending_it_and_taken_once<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    promise!(
        s.get_join_token(b"missing")?.is_none(),
        "an unknown hash reads as None"
    );
    promise!(
        s.take_join_token(b"missing", &[])?.is_none(),
        "an unknown hash is taken as None"
    );
    let t1 = token("cell-1", 900)?;
    let t2 = token("cell-2", 1_800)?;
    s.insert_join_token(&[1; 32], &t1, &[])?;
    s.insert_join_token(&[2; 32], &t2, &[])?;
    for _ in 0..2 {
        let got = s.get_join_token(&[1; 32])?;
        promise!(
            got.as_ref().is_some_and(|g| same_token(g, &t1)),
            "get reads the token without spending it (got {got:?})"
        );
    }
    let got = s.take_join_token(&[1; 32], &[])?;
    promise!(
        got.as_ref().is_some_and(|g| same_token(g, &t1)),
        "the first take answers the token (got {got:?})"
    );
    promise!(
        s.take_join_token(&[1; 32], &[])?.is_none(),
        "a second take answers None"
    );
    promise!(
        s.get_join_token(&[1; 32])?.is_none(),
        "a taken token cannot be read"
    );
    let got = s.get_join_token(&[2; 32])?;
    promise!(
        got.as_ref().is_some_and(|g| same_token(g, &t2)),
        "taking one token leaves another"
    );
    Ok(())
}

/// Threads that take the same join token at the same moment: exactly one gets it.
pub(crate) fn of_concurrent_takes_of_one_join_token_exactly_one_wins<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    const THREADS: usize = 8;
    const ROUNDS: u8 = 10;
    let s = h.open_fresh()?;
    for round in 0..ROUNDS {
        let hash = [round; 32];
        s.insert_join_token(&hash, &token("cell-1", 900)?, &[])?;
        let start = Barrier::new(THREADS);
        let answers: Vec<Result<bool, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        s.take_join_token(&hash, &[]).map(|t| t.is_some())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|t| match t.join() {
                    Ok(answer) => answer.map_err(|e| e.to_string()),
                    Err(_) => Err("a taking thread panicked".to_string()),
                })
                .collect()
        });
        let mut winners = 0;
        for a in answers {
            match a {
                Ok(true) => winners += 1,
                Ok(false) => {}
                Err(e) => return Err(Violation::Broken(format!("a concurrent take failed: {e}"))),
            }
        }
        promise!(
            winners == 1,
            "{winners} of {THREADS} concurrent takes got the token (round {round})"
        );
    }
    Ok(())
}

/// Purging removes exactly the tokens that expired before the given time, says how many,
/// and the rest can still be read and taken; a second purge finds nothing.
pub(crate) fn expired_join_tokens_are_purged_and_live_ones_stay<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    promise!(
        s.purge_expired_join_tokens(at(1_000))? == 0,
        "an empty store purges nothing"
    );
    let live = token("cell-1", 2_000)?;
    let boundary = token("cell-2", 1_000)?;
    s.insert_join_token(b"expired-1", &token("cell-3", 10)?, &[])?;
    s.insert_join_token(b"expired-2", &token("cell-4", 999)?, &[])?;
    s.insert_join_token(b"live", &live, &[])?;
    s.insert_join_token(b"boundary", &boundary, &[])?;
    let purged = s.purge_expired_join_tokens(at(1_000))?;
    promise!(purged == 2, "two tokens had expired (purged {purged})");
    for hash in [&b"expired-1"[..], b"expired-2"] {
        promise!(
            s.get_join_token(hash)?.is_none(),
            "a purged token cannot be read"
        );
    }
    let got = s.get_join_token(b"boundary")?;
    promise!(
        got.as_ref().is_some_and(|g| same_token(g, &boundary)),
        "a token expiring at the purge time stays (got {got:?})"
    );
    promise!(
        s.purge_expired_join_tokens(at(1_000))? == 0,
        "a second purge finds nothing"
    );
    let got = s.take_join_token(b"live", &[])?;
    promise!(
        got.as_ref().is_some_and(|g| same_token(g, &live)),
        "a live token can still be taken (got {got:?})"
    );
    let s = h.reopen(s)?;
    promise!(
        s.get_join_token(b"expired-1")?.is_none() && s.get_join_token(b"boundary")?.is_some(),
        "a purge is durable"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Durability.

/// Everything a write method returned from is there after the store is closed and opened
/// again: metadata, generations and sequence, records with their indexes, revocations,
/// notAfter bounds, join tokens (and the absence of taken ones); serials stay taken.
pub(crate) fn everything_written_is_there_after_reopening<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    s.put_meta("initialized", b"yes")?;
    let one = authority(1, GenerationState::Retiring);
    let two = authority(2, GenerationState::Active);
    s.save_authorities(&[one.clone(), two.clone()], 7, &[])?;
    let a = instance("a1", "b1", 1, 10, 1_000)?;
    let b = instance("a2", "b1", 2, 20, 2_000)?;
    let mut c = credential("cell-1", 2, 30, 3_000)?;
    s.insert_certificates(&[a.clone(), b.clone()])?;
    s.insert_certificates(std::slice::from_ref(&c))?;
    c.revoked_at = Some(at(40));
    c.revocation_reason = Some("cell decommissioned".into());
    s.update_certificate(&c)?;
    let kept = token("cell-2", 900)?;
    s.insert_join_token(b"kept", &kept, &[])?;
    s.insert_join_token(b"spent", &token("cell-3", 900)?, &[])?;
    promise!(
        s.take_join_token(b"spent", &[])?.is_some(),
        "the token to spend is there"
    );

    let s = h.reopen(s)?;
    promise!(
        s.get_meta("initialized")?.as_deref() == Some(&b"yes"[..]),
        "metadata survives a reopen"
    );
    let (all, seq) = s.load_authorities()?;
    promise!(
        seq == 7
            && all.len() == 2
            && same_authority(&all[0], &one)
            && same_authority(&all[1], &two),
        "generations and the sequence survive a reopen (got {} and {seq})",
        all.len()
    );
    for r in [&a, &b, &c] {
        stored_as(&s, r)?;
    }
    let found = serials(&s.query_certificates(&query(None, Some("b1"), 100)?)?);
    promise!(
        found == [b.serial, a.serial],
        "the app index survives a reopen (got {found:?})"
    );
    let found = serials(&s.query_certificates(&query(Some("a1"), None, 100)?)?);
    promise!(
        found == [a.serial],
        "the instance index survives a reopen (got {found:?})"
    );
    let found = serials(&s.query_certificates(&query(None, None, 100)?)?);
    promise!(
        found == [c.serial, b.serial, a.serial],
        "the time order survives a reopen (got {found:?})"
    );
    let revoked = s.revoked(AuthorityId(2))?;
    promise!(
        revoked == [(c.serial, at(40))],
        "revocations survive a reopen (got {revoked:?})"
    );
    promise!(
        s.last_leaf_not_after(AuthorityId(1))? == Some(at(1_000))
            && s.last_leaf_not_after(AuthorityId(2))? == Some(at(3_000)),
        "last notAfter bounds survive a reopen"
    );
    let got = s.get_join_token(b"kept")?;
    promise!(
        got.as_ref().is_some_and(|g| same_token(g, &kept)),
        "an unspent join token survives a reopen"
    );
    promise!(
        s.take_join_token(b"spent", &[])?.is_none(),
        "a spent join token stays spent after a reopen"
    );
    let mut again = instance("a9", "b9", 2, 50, 50)?;
    again.serial = a.serial;
    promise!(
        matches!(
            s.insert_certificates(&[again]),
            Err(StoreError::SerialExists(_))
        ),
        "a recorded serial stays taken after a reopen"
    );

    // And what is written after a reopen survives the next one.
    let d = instance("a4", "b4", 2, 60, 4_000)?;
    s.insert_certificates(std::slice::from_ref(&d))?;
    let s = h.reopen(s)?;
    stored_as(&s, &d)?;
    promise!(
        s.last_leaf_not_after(AuthorityId(2))? == Some(at(4_000)),
        "writes after a reopen survive the next reopen"
    );
    let distinct: HashSet<Serial> = serials(&s.query_certificates(&query(None, None, 100)?)?)
        .into_iter()
        .collect();
    promise!(
        distinct.len() == 4,
        "each record is there once after two reopens (got {})",
        distinct.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Leases.

/// A shared store grants a lease to one holder at a time: its holder renews it (the expiry
/// moves forward), another is refused and told who holds it, leases of other names are
/// independent, and once it lapses another holder takes it. A store only one process can
/// open answers `Unshared` to everyone and reports no holder.
pub(crate) fn a_lease_has_one_holder_until_it_lapses<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    const PERIOD: Duration = Duration::from_secs(1);
    let s = h.open_fresh()?;
    promise!(
        s.current_lease("schedule")?.is_none(),
        "a lease never taken has no holder"
    );
    let first = match s.acquire_lease("schedule", "replica-a", PERIOD)? {
        LeaseGrant::Unshared => {
            let again = s.acquire_lease("schedule", "replica-b", PERIOD)?;
            promise!(
                again == LeaseGrant::Unshared,
                "a store that answered Unshared answers it to everyone (got {again:?})"
            );
            promise!(
                s.current_lease("schedule")?.is_none(),
                "an unshared store reports no holder"
            );
            return Ok(());
        }
        LeaseGrant::Held(l) => l,
        LeaseGrant::Refused(l) => {
            return Err(Violation::Broken(format!(
                "a free lease was refused (held by {l:?})"
            )))
        }
    };
    promise!(
        first.holder == "replica-a",
        "the lease names its holder (got {first:?})"
    );
    let got = s.acquire_lease("schedule", "replica-b", PERIOD)?;
    promise!(
        matches!(&got, LeaseGrant::Refused(l) if l.holder == "replica-a"),
        "a held lease is refused to another, naming the holder (got {got:?})"
    );
    let current = s.current_lease("schedule")?;
    promise!(
        current.as_ref().is_some_and(|l| l.holder == "replica-a"),
        "the current holder is reported (got {current:?})"
    );
    std::thread::sleep(Duration::from_millis(50));
    let renewed = s.acquire_lease("schedule", "replica-a", PERIOD)?;
    promise!(
        matches!(&renewed, LeaseGrant::Held(l) if l.holder == "replica-a" && l.expires_at > first.expires_at),
        "the holder renews its lease and the expiry moves forward (got {renewed:?}, was {first:?})"
    );
    let other = s.acquire_lease("other", "replica-b", PERIOD)?;
    promise!(
        matches!(&other, LeaseGrant::Held(l) if l.holder == "replica-b"),
        "leases of other names are independent (got {other:?})"
    );
    std::thread::sleep(PERIOD + Duration::from_millis(300));
    promise!(
        s.current_lease("schedule")?.is_none(),
        "a lapsed lease has no holder"
    );
    let taken = s.acquire_lease("schedule", "replica-b", PERIOD)?;
    promise!(
        matches!(&taken, LeaseGrant::Held(l) if l.holder == "replica-b"),
        "a lapsed lease goes to the next caller (got {taken:?})"
    );
    let got = s.acquire_lease("schedule", "replica-a", PERIOD)?;
    promise!(
        matches!(&got, LeaseGrant::Refused(l) if l.holder == "replica-b"),
        "the former holder is refused once another took it (got {got:?})"
    );
    Ok(())
}

/// A store that serves calls answers the reachability check, quickly.
pub(crate) fn a_store_that_answers_answers_the_ping<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    s.put_meta("k", b"v")?;
    let start = std::time::Instant::now();
    s.ping()?;
    promise!(
        start.elapsed() < Duration::from_secs(1),
        "the ping answers within a second (took {:?})",
        start.elapsed()
    );
    Ok(())
}

/// The read-all methods see everything, each once: every metadata value, every record
/// (revocations included) page by page in increasing serial order, every unspent token.
pub(crate) fn the_whole_store_reads_back_for_a_copy<H: Harness>(
    h: &mut H,
) -> Result<(), Violation> {
    let s = h.open_fresh()?;
    promise!(
        s.all_meta()?.is_empty()
            && s.certificates_after(None, 10)?.is_empty()
            && s.all_join_tokens()?.is_empty(),
        "a fresh store reads back empty"
    );
    s.put_meta("a", b"1")?;
    s.put_meta("b", b"2")?;
    let mut meta = s.all_meta()?;
    meta.sort();
    promise!(
        meta == [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec())
        ],
        "every metadata value reads back (got {meta:?})"
    );
    let mut records = Vec::new();
    for n in 0..5u64 {
        records.push(instance(&format!("a{n}"), "b1", 1, 10 + n, 1_000)?);
    }
    s.insert_certificates(&records)?;
    records[2].revoked_at = Some(at(50));
    s.update_certificate(&records[2])?;
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.certificates_after(after.as_ref(), 2)?;
        promise!(page.len() <= 2, "a page holds at most its limit");
        let Some(last) = page.last() else { break };
        after = Some(last.serial);
        seen.extend(page);
    }
    let mut expected: Vec<Serial> = records.iter().map(|r| r.serial).collect();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    promise!(
        serials(&seen) == expected,
        "paging visits every record once, in serial order (got {:?})",
        serials(&seen)
    );
    let revoked = seen.iter().find(|r| r.serial == records[2].serial);
    promise!(
        revoked.is_some_and(|r| same_cert(r, &records[2])),
        "records read back as they are now, revocation included"
    );
    let t1 = token("cell-1", 900)?;
    s.insert_join_token(b"one", &t1, &[])?;
    s.insert_join_token(b"two", &token("cell-2", 900)?, &[])?;
    s.take_join_token(b"two", &[])?;
    let tokens = s.all_join_tokens()?;
    promise!(
        tokens.len() == 1 && tokens[0].0 == b"one" && same_token(&tokens[0].1, &t1),
        "every unspent token reads back under its hash (got {tokens:?})"
    );
    Ok(())
}
