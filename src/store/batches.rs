//! Cutting a batch from a tenant's oldest pending records: the one rule both backends take
//! batches by.

use super::*;

/// What a tenant's oldest pending events give for a batch.
pub(super) enum Cut {
    Events(Vec<EventRecord>),
    /// The head is in backoff until this Unix millisecond.
    NotBefore(i64),
    Empty,
}

/// How many of a tenant's oldest pending records a batch of `max` may be cut from: `max`, and
/// up to [`SKIP_SCAN`] more passed over (an account's backlog ahead of another's longer than
/// that waits for its turn). sled reads them one by one, only as far as the cut goes.
pub(super) fn scan_limit(max: usize) -> usize {
    max.max(1) + SKIP_SCAN
}

/// The most records passed over to reach another account's events on the same tenant.
pub(super) const SKIP_SCAN: usize = 4096;

/// Cut a batch of at most `max` from a tenant's oldest pending records, in order, for one
/// account (a report is for one): the oldest record's account, unless that account cannot go
/// now. An account is passed over when it is in `skip` (its credentials refused, its data center
/// closed) or when its oldest record here waits out a retry: each account keeps its own order
/// and its own backoff on the tenant, and one account's wait holds back no other. With no
/// record ready, the earliest retry among them (`NotBefore`). A next attempt further ahead than
/// any retry waits (a clock that ran ahead, or another host's) is not trusted: the record is
/// tried now. Both backends take batches through this.
pub(super) fn cut_batch(
    tenant: &TenantId,
    records: impl Iterator<Item = Result<EventRecord, StoreError>>,
    now: i64,
    horizon_ms: i64,
    max: usize,
    skip: &[String],
) -> Result<Cut, StoreError> {
    let mut events: Vec<EventRecord> = Vec::new();
    let mut waiting: Vec<Option<String>> = Vec::new();
    let mut not_before: Option<i64> = None;
    for rec in records {
        let rec = rec?;
        let account = account_of(rec.account.as_deref());
        if skip.iter().any(|s| s == account) || waiting.contains(&rec.account) {
            continue;
        }
        match events.first() {
            None => {
                if let Some(at) = rec.next_attempt_at_ms {
                    if at > now + horizon_ms {
                        tracing::warn!(
                            message = "a persisted next attempt lies further ahead than any retry waits; trying now",
                            tenant_id = %tenant,
                            next_attempt_at_ms = at
                        );
                    } else if at > now {
                        not_before = Some(not_before.map_or(at, |n| n.min(at)));
                        waiting.push(rec.account.clone());
                        continue;
                    }
                }
            }
            Some(first) if first.account != rec.account => break,
            Some(_) => {}
        }
        events.push(rec);
        if events.len() >= max.max(1) {
            break;
        }
    }
    Ok(match (events.is_empty(), not_before) {
        (false, _) => Cut::Events(events),
        (true, Some(at)) => Cut::NotBefore(at),
        (true, None) => Cut::Empty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, account: &str, next_attempt_at_ms: Option<i64>) -> EventRecord {
        EventRecord {
            id: Uuid::now_v7(),
            tenant_id: Uuid::nil(),
            kind: EventKind::Custom,
            category: "c".into(),
            action: format!("{account}-{seq}"),
            idempotency_key: None,
            accepted_at_ms: 0,
            occurred_at_ms: None,
            account: Some(account.into()),
            state: EventState::Queued,
            attempts: 0,
            last_error: None,
            next_attempt_at_ms,
            delivered_at_ms: None,
            dead_reason: None,
            seq,
        }
    }

    fn cut(records: Vec<EventRecord>, skip: &[&str]) -> Cut {
        let skip: Vec<String> = skip.iter().map(|s| s.to_string()).collect();
        cut_batch(
            &Uuid::nil(),
            records.into_iter().map(Ok),
            1_000,
            60_000,
            10,
            &skip,
        )
        .unwrap()
    }

    fn actions(c: &Cut) -> Vec<String> {
        match c {
            Cut::Events(e) => e.iter().map(|r| r.action.clone()).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn one_accounts_wait_holds_back_no_other_account_on_the_tenant() {
        // a's oldest waits out a retry: b's events go, in order, and a's stay behind.
        let c = cut(
            vec![
                rec(1, "a", Some(5_000)),
                rec(2, "b", None),
                rec(3, "a", None),
                rec(4, "b", None),
            ],
            &[],
        );
        assert_eq!(actions(&c), ["b-2", "b-4"]);
        // Only a's, waiting: the earliest retry.
        let c = cut(vec![rec(1, "a", Some(5_000)), rec(2, "a", None)], &[]);
        assert!(matches!(c, Cut::NotBefore(5_000)));
        // Passed over: b's events, then nothing.
        let c = cut(vec![rec(1, "a", None), rec(2, "b", None)], &["a"]);
        assert_eq!(actions(&c), ["b-2"]);
        assert!(matches!(cut(vec![rec(1, "a", None)], &["a"]), Cut::Empty));
        // Without waits, the oldest account's events up to the next other account, as before.
        let c = cut(
            vec![
                rec(1, "a", None),
                rec(2, "a", None),
                rec(3, "b", None),
                rec(4, "a", None),
            ],
            &[],
        );
        assert_eq!(actions(&c), ["a-1", "a-2"]);
    }
}
