//! Each account's pending events and dead letters, counted as the writes that change them are
//! made (never by reading the events): what `GET /v1/accounts` shows, at the cost of the number
//! of accounts.

use std::collections::HashMap;

use super::AccountEvents;

/// The account a record belongs to: its own, or `default` for one stored before accounts (the
/// one rule both backends count, remove and list by).
pub(crate) fn account_of(account: Option<&str>) -> &str {
    account.unwrap_or(crate::config::DEFAULT_ACCOUNT)
}

/// Pending and dead events per account (accounts with none are left out).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AccountCounts {
    by_account: HashMap<String, AccountEvents>,
}

impl AccountCounts {
    pub fn get(&self, account: &str) -> AccountEvents {
        self.by_account.get(account).copied().unwrap_or_default()
    }

    /// Every account with events, and its counts.
    pub fn iter(&self) -> impl Iterator<Item = (&str, AccountEvents)> {
        self.by_account.iter().map(|(a, n)| (a.as_str(), *n))
    }

    pub(crate) fn set(&mut self, account: &str, n: AccountEvents) {
        if n.pending == 0 && n.dead == 0 {
            self.by_account.remove(account);
        } else {
            self.by_account.insert(account.to_string(), n);
        }
    }

    /// Count one event in a state (a recount).
    pub(super) fn count(&mut self, account: Option<&str>, pending: bool) {
        let n = self
            .by_account
            .entry(account_of(account).to_string())
            .or_default();
        if pending {
            n.pending += 1;
        } else {
            n.dead += 1;
        }
    }

    pub(super) fn remove(&mut self, account: &str) {
        self.by_account.remove(account);
    }
}

/// The changes a write makes to the counts: gathered while the write is built, applied to the
/// counts once it is.
#[derive(Debug, Default)]
pub(super) struct Shift {
    deltas: HashMap<String, (i64, i64)>,
}

impl Shift {
    /// Called per event on the intake path: an account already in the shift costs no
    /// allocation.
    pub(super) fn add(&mut self, account: Option<&str>, pending: i64, dead: i64) {
        let account = account_of(account);
        let d = match self.deltas.get_mut(account) {
            Some(d) => d,
            None => self.deltas.entry(account.to_string()).or_default(),
        };
        d.0 += pending;
        d.1 += dead;
    }

    /// Each changed account's counts after the write.
    pub(super) fn after(&self, counts: &AccountCounts) -> Vec<(String, AccountEvents)> {
        self.deltas
            .iter()
            .map(|(account, (dp, dd))| {
                let n = counts.get(account);
                let moved = |v: u64, d: i64| (v as i64 + d).max(0) as u64;
                (
                    account.clone(),
                    AccountEvents {
                        pending: moved(n.pending, *dp),
                        dead: moved(n.dead, *dd),
                    },
                )
            })
            .collect()
    }

    /// Apply to the counts (once the write is made).
    pub(super) fn apply(self, counts: &mut AccountCounts) {
        let after = self.after(counts);
        for (account, n) in after {
            counts.set(&account, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_move_each_accounts_counts_and_drop_empty_ones() {
        let mut counts = AccountCounts::default();
        let mut s = Shift::default();
        s.add(Some("a"), 3, 0);
        s.add(None, 1, 0);
        s.apply(&mut counts);
        assert_eq!(counts.get("a").pending, 3);
        assert_eq!(counts.get("default").pending, 1);
        let mut s = Shift::default();
        s.add(Some("a"), -1, 1);
        s.add(None, -1, 0);
        s.apply(&mut counts);
        assert_eq!(
            counts.get("a"),
            AccountEvents {
                pending: 2,
                dead: 1
            }
        );
        assert_eq!(counts.iter().count(), 1, "an account with none is left out");
    }
}
