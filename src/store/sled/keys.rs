//! Key layout: one-byte prefixes, big-endian integers so keys sort by arrival (table in the
//! module doc of `store`), and the encodings of values.

use super::*;

pub(super) fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub(super) fn event_key(id: &Uuid) -> Vec<u8> {
    key(b'e', &[id.as_bytes()])
}

pub(super) fn pending_key(tenant: &TenantId, seq: u64) -> Vec<u8> {
    key(b'p', &[tenant.as_bytes(), &seq.to_be_bytes()])
}

pub(super) fn dead_key(id: &Uuid) -> Vec<u8> {
    key(b'd', &[id.as_bytes()])
}

/// `x` + id: when an event was delivered and after how many attempts (a small value, so an
/// acknowledgement does not rewrite the event's record).
pub(super) fn delivered_marker_key(id: &Uuid) -> Vec<u8> {
    key(b'x', &[id.as_bytes()])
}

pub(super) fn delivered_marker(at_ms: i64, attempts: u32) -> Vec<u8> {
    let mut v = at_ms.to_be_bytes().to_vec();
    v.extend_from_slice(&attempts.to_be_bytes());
    v
}

pub(super) fn delivered_key(at_ms: i64, id: &Uuid) -> Vec<u8> {
    key(b'c', &[&(at_ms.max(0) as u64).to_be_bytes(), id.as_bytes()])
}

pub(super) fn idem_key(k: &str) -> Vec<u8> {
    key(b'i', &[k.as_bytes()])
}

pub(super) fn idem_expiry_key(at_ms: i64, k: &str) -> Vec<u8> {
    key(b'j', &[&(at_ms.max(0) as u64).to_be_bytes(), k.as_bytes()])
}

pub(super) fn tenant_key(t: &TenantId) -> Vec<u8> {
    key(b't', &[t.as_bytes()])
}

pub(super) fn inventory_key(t: &TenantId) -> Vec<u8> {
    key(b'n', &[t.as_bytes()])
}

pub(super) fn meta_key(name: &str) -> Vec<u8> {
    key(b'm', &[name.as_bytes()])
}

pub(super) fn uuid_from(bytes: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(bytes)
        .map_err(|_| StoreError::Corrupt(format!("bad uuid of {} bytes", bytes.len())))
}

pub(super) fn u64_from(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("bad integer".into()))?;
    Ok(u64::from_be_bytes(arr))
}

pub(super) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialize")
}

pub(super) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn parse_pending_key(k: &[u8]) -> Result<(TenantId, u64), StoreError> {
    if k.len() != 25 {
        return Err(StoreError::Corrupt("bad pending key".into()));
    }
    Ok((uuid_from(&k[1..17])?, u64_from(&k[17..25])?))
}

/// The event an idempotency key points at (the first 16 bytes of its value; the accepted time
/// follows). A short value is a damaged record, reported as such rather than sliced.
pub(super) fn idem_target(value: &[u8]) -> Result<Uuid, StoreError> {
    match value.get(..16) {
        Some(id) => uuid_from(id),
        None => Err(StoreError::Corrupt(format!(
            "idempotency record of {} bytes (expected at least 16)",
            value.len()
        ))),
    }
}

/// `k` + account id: its pending and dead events.
pub(super) fn account_count_key(account: &str) -> Vec<u8> {
    key(b'k', &[account.as_bytes()])
}

pub(super) fn account_count_value(n: AccountEvents) -> Vec<u8> {
    let mut v = n.pending.to_be_bytes().to_vec();
    v.extend_from_slice(&n.dead.to_be_bytes());
    v
}

pub(super) fn account_count_from(v: &[u8]) -> Result<AccountEvents, StoreError> {
    if v.len() != 16 {
        return Err(StoreError::Corrupt(format!(
            "an account's event counts are {} bytes, not 16",
            v.len()
        )));
    }
    Ok(AccountEvents {
        pending: u64_from(&v[..8])?,
        dead: u64_from(&v[8..])?,
    })
}

/// The metadata key saying the `k` counts are kept (a store written before them, or one just
/// imported, has them recounted at open).
pub(super) const ACCOUNT_COUNTS_MARK: &str = "account_counts";

/// Write each changed account's counts into `b` (an account with none left loses its key).
pub(super) fn put_account_counts(b: &mut ::sled::Batch, after: Vec<(String, AccountEvents)>) {
    for (account, n) in after {
        if n.pending == 0 && n.dead == 0 {
            b.remove(account_count_key(&account));
        } else {
            b.insert(account_count_key(&account), account_count_value(n));
        }
    }
}
