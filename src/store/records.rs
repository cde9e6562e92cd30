//! The store's records and the answers of its operations.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Activation,
    Deactivation,
    Custom,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Activation => "activation",
            EventKind::Deactivation => "deactivation",
            EventKind::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    Queued,
    InFlight,
    Delivered,
    Dead,
}

/// The integration state of a tenant, as intended by the vendor or as last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegrationState {
    Active,
    Inactive,
}

/// An event as the API hands it to the store, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub tenant_id: TenantId,
    pub kind: EventKind,
    pub category: String,
    pub action: String,
    pub idempotency_key: Option<String>,
    /// When the vendor says the event happened (Unix milliseconds), if it said.
    pub occurred_at_ms: Option<i64>,
    /// The partner account it is reported for (None: `default`).
    pub account: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: Uuid,
    pub tenant_id: TenantId,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub category: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub idempotency_key: Option<String>,
    /// Unix milliseconds.
    pub accepted_at_ms: i64,
    /// When the vendor says it happened (Unix milliseconds), if it said.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub occurred_at_ms: Option<i64>,
    /// The partner account it is reported for (None, as stored by older versions: `default`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub account: Option<String>,
    pub state: EventState,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_attempt_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delivered_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dead_reason: Option<String>,
    /// Position in the tenant's queue (changes when a dead letter is retried).
    pub seq: u64,
}

impl EventRecord {
    /// When the decision it carries was taken, for ordering decisions: `occurred_at` as the
    /// vendor said, else its acceptance (which intake dates no earlier than the tenant's
    /// decisions stored before it, whatever the clocks).
    pub fn decided_at(&self) -> i64 {
        self.occurred_at_ms.unwrap_or(self.accepted_at_ms)
    }
}

/// Whether `events` hold an activation or a deactivation.
pub fn has_decision(events: &[EventRecord]) -> bool {
    events.iter().any(|e| e.kind.intended_state().is_some())
}

/// When the newest decision of `events` was taken (none: they hold no decision).
pub fn newest_decision_at(events: &[EventRecord]) -> Option<i64> {
    events
        .iter()
        .filter(|e| e.kind.intended_state().is_some())
        .map(EventRecord::decided_at)
        .max()
}

/// What a decision set aside is recorded with (delivered, never sent).
pub const SUPERSEDED: &str = "superseded: a newer decision for the tenant was already reported";

/// The activations and deactivations of `events` (a tenant's batch, in acceptance order) that
/// are older than the tenant's newest decision already reported (`last_sent`), or than a
/// decision ahead of them in the batch: sending them would end the platform at an older
/// decision than one it has.
pub fn older_decisions(events: &[EventRecord], last_sent: Option<i64>) -> Vec<Uuid> {
    let mut newest = last_sent.unwrap_or(i64::MIN);
    let mut old = Vec::new();
    for e in events.iter().filter(|e| e.kind.intended_state().is_some()) {
        if e.decided_at() < newest {
            old.push(e.id);
        } else {
            newest = e.decided_at();
        }
    }
    old
}

/// What happened to one event handed to `enqueue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored and durable.
    Accepted(Uuid),
    /// The idempotency key was seen before; nothing new was stored.
    Duplicate(Uuid),
}

impl Enqueued {
    pub fn id(self) -> Uuid {
        match self {
            Enqueued::Accepted(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantState {
    pub tenant_id: TenantId,
    /// The account of its latest activation or deactivation (None: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default)]
    pub intended: Option<IntegrationState>,
    #[serde(default)]
    pub intended_at_ms: Option<i64>,
    #[serde(default)]
    pub last_reported: Option<IntegrationState>,
    #[serde(default)]
    pub last_reported_at_ms: Option<i64>,
    /// When the newest decision reported was taken (`occurred_at`, else acceptance): a
    /// decision older than it is set aside, never sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sent_at_ms: Option<i64>,
    /// `intended_at_ms` is the date of the decision itself (`occurred_at`, else acceptance).
    /// A state written by an older version of the sled store dated its intended state when it
    /// was accepted, whatever its `occurred_at`: the next decision replaces such a state, as it
    /// did then, rather than be compared with that date.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dated: bool,
}

impl TenantState {
    /// The report of the tenant's intended state again (after a takeover, after a late report
    /// of another replica), through the account of its latest decision. It is dated as the
    /// decision it repeats, so a newer decision accepted meanwhile wins over it.
    pub fn reassertion(&self) -> Option<NewEvent> {
        let mut ev = NewEvent::state_change(self.tenant_id, self.intended?, None);
        ev.account = self.account.clone();
        ev.occurred_at_ms = self.intended_at_ms;
        Some(ev)
    }
}

/// A tenant as the last tenant reconcile saw it on the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryTenant {
    pub id: TenantId,
    /// The account whose tree it was found in (None: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub parent_id: Option<TenantId>,
    pub name: Option<String>,
    pub kind: Option<String>,
    pub enabled: Option<bool>,
    pub deleted: bool,
    pub version: i64,
}

/// The oldest pending events of one tenant, taken for delivery.
///
/// The batch is a guard: while it lives its tenant is busy and its events are in flight. It is
/// settled by `ack_delivered`, `mark_failed` or `dead_letter`; dropped unsettled (a lane that
/// panicked, a send abandoned at shutdown) it gives the events back to the queue in their place,
/// so no path can leak an in-flight batch.
pub struct Batch {
    pub tenant_id: TenantId,
    pub events: Vec<EventRecord>,
    pub(super) store: std::sync::Weak<dyn InFlight>,
    pub(super) released: std::sync::atomic::AtomicBool,
    /// (shard, epoch) the batch was taken under, when the store is shared by replicas.
    pub(super) fence: Option<(u32, u64)>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("tenant_id", &self.tenant_id)
            .field("events", &self.events)
            .finish()
    }
}

/// A backend's record of what is in flight: tenants with a batch out, and its events. Kept in
/// memory by both backends; a batch gives its part back when it is settled or dropped.
pub(super) trait InFlight: Send + Sync {
    fn in_flight(&self) -> (&Mutex<HashSet<TenantId>>, &Mutex<HashSet<Uuid>>);

    /// Mark the tenant busy; false when a batch of it is already out.
    fn claim(&self, tenant: &TenantId) -> bool {
        lock(self.in_flight().0).insert(*tenant)
    }

    /// Unmark a tenant claimed for a batch that was not taken after all.
    fn unclaim(&self, tenant: &TenantId) {
        lock(self.in_flight().0).remove(tenant);
    }

    /// A batch taken under `fence` (a shard and its epoch, on a shared store) ended: settled,
    /// or given back.
    fn ended(&self, _fence: Option<(u32, u64)>) {}
}

impl Batch {
    /// A batch of a claimed tenant, its events marked in flight in `store`.
    pub(super) fn taken(
        store: Arc<dyn InFlight>,
        tenant_id: TenantId,
        mut events: Vec<EventRecord>,
        fence: Option<(u32, u64)>,
    ) -> Batch {
        let mut ids = lock(store.in_flight().1);
        for rec in &mut events {
            rec.state = EventState::InFlight;
            ids.insert(rec.id);
        }
        drop(ids);
        Batch {
            tenant_id,
            events,
            store: Arc::downgrade(&store),
            released: Default::default(),
            fence,
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.release();
    }
}

impl Batch {
    /// End the batch's time in flight (once; later calls do nothing).
    pub(super) fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(store) = self.store.upgrade() {
            let (tenants, ids) = store.in_flight();
            lock(tenants).remove(&self.tenant_id);
            let mut ids = lock(ids);
            for rec in &self.events {
                ids.remove(&rec.id);
            }
            drop(ids);
            store.ended(self.fence);
        }
    }

    pub fn ids(&self) -> Vec<Uuid> {
        self.events.iter().map(|e| e.id).collect()
    }
    /// When the oldest event of the batch was accepted.
    pub fn oldest_accepted_ms(&self) -> i64 {
        self.events
            .iter()
            .map(|e| e.accepted_at_ms)
            .min()
            .unwrap_or(0)
    }
    pub fn max_attempts(&self) -> u32 {
        self.events.iter().map(|e| e.attempts).max().unwrap_or(0)
    }
}

/// The answer of `take_batch`.
#[derive(Debug)]
pub enum Take {
    Ready(Batch),
    /// The head is in backoff until this Unix millisecond.
    NotBefore(i64),
    /// A batch of this tenant is already in flight.
    Busy,
    Empty,
}

/// Counters the rest needs cheaply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub depth: u64,
    pub in_flight: u64,
    pub dead_letters: u64,
    pub oldest_pending_accepted_ms: Option<i64>,
    /// How long the oldest pending event has waited: from the wall clock when this process
    /// first saw it as the oldest, then on the monotonic clock, so a clock set back (or
    /// forward) later neither hides a stale event nor ages one.
    pub oldest_pending_age_ms: Option<u64>,
}

/// Group-commit figures, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushStats {
    pub flushes: u64,
    pub waiters: u64,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub cache_capacity_mb: u64,
    pub delivered_retention: Duration,
    /// Open a store found damaged anyway (on what is left), logging what is missing.
    pub accept_damaged: bool,
    /// The longest any retry waits; a persisted next attempt further ahead than this (a clock
    /// that ran ahead, a store restored on another host) is not trusted.
    pub max_retry_delay: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_mb: 64,
            delivered_retention: Duration::from_secs(24 * 3600),
            accept_damaged: false,
            max_retry_delay: Duration::from_secs(300),
        }
    }
}

// The meaning of each kind of event: its one home.

/// The category of activation and deactivation events when none is given.
pub const DEFAULT_CATEGORY: &str = "activation";

impl EventKind {
    /// The integration state an event of this kind asks for (custom events change none).
    pub fn intended_state(self) -> Option<IntegrationState> {
        match self {
            EventKind::Activation => Some(IntegrationState::Active),
            EventKind::Deactivation => Some(IntegrationState::Inactive),
            EventKind::Custom => None,
        }
    }

    /// The action text when none is given.
    pub fn default_action(self) -> &'static str {
        match self {
            EventKind::Deactivation => "deactivated integration",
            _ => "activated integration",
        }
    }
}

impl IntegrationState {
    /// The kind of event that reports this state.
    pub fn event_kind(self) -> EventKind {
        match self {
            IntegrationState::Active => EventKind::Activation,
            IntegrationState::Inactive => EventKind::Deactivation,
        }
    }
}

impl NewEvent {
    /// An activation or deactivation with the default texts.
    pub fn state_change(
        tenant_id: TenantId,
        state: IntegrationState,
        idempotency_key: Option<String>,
    ) -> NewEvent {
        let kind = state.event_kind();
        NewEvent {
            tenant_id,
            kind,
            category: DEFAULT_CATEGORY.into(),
            action: kind.default_action().into(),
            idempotency_key,
            occurred_at_ms: None,
            account: None,
        }
    }
}
