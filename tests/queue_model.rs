//! The durable queue against a simple in-memory model: random interleavings of enqueue,
//! take-batch, ack, fail, dead-letter, retry, purge and reopen keep per-tenant order, lose
//! nothing and duplicate nothing.

use std::collections::{HashMap, VecDeque};

use proptest::prelude::*;
use statusd::store::{
    now_ms, Batch, EventKind, EventState, NewEvent, Queue, StoreOptions, Take, TenantId,
};
use uuid::Uuid;

mod common;

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        tenant: usize,
        n: usize,
        key: Option<u8>,
    },
    Take {
        tenant: usize,
        max: usize,
    },
    Ack {
        tenant: usize,
    },
    Fail {
        tenant: usize,
    },
    Dead {
        tenant: usize,
    },
    RetryDead {
        pick: usize,
    },
    PurgeDead {
        pick: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..4usize, proptest::option::of(0..6u8))
            .prop_map(|(tenant, n, key)| Op::Enqueue { tenant, n, key }),
        3 => (0..3usize, 1..5usize).prop_map(|(tenant, max)| Op::Take { tenant, max }),
        2 => (0..3usize).prop_map(|tenant| Op::Ack { tenant }),
        1 => (0..3usize).prop_map(|tenant| Op::Fail { tenant }),
        1 => (0..3usize).prop_map(|tenant| Op::Dead { tenant }),
        1 => (0..8usize).prop_map(|pick| Op::RetryDead { pick }),
        1 => (0..8usize).prop_map(|pick| Op::PurgeDead { pick }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    pending: HashMap<usize, VecDeque<Uuid>>,
    dead: Vec<Uuid>,
    delivered: Vec<Uuid>,
    keys: HashMap<u8, Uuid>,
    /// When each event's decision was taken, as the store dated it at acceptance.
    decided: HashMap<Uuid, i64>,
    /// Each tenant's newest decision reported.
    last_sent: HashMap<usize, i64>,
}

impl Model {
    /// What taking a batch does first: every event here is an activation, and one dated before
    /// the tenant's newest decision reported, or before one ahead of it in the batch, is
    /// recorded as delivered (superseded) and never sent. A dead letter retried after a newer
    /// decision went out is one.
    fn set_aside_older_decisions(&mut self, tenant: usize, max: usize) {
        let pending = self.pending.entry(tenant).or_default();
        loop {
            let mut newest = self.last_sent.get(&tenant).copied().unwrap_or(i64::MIN);
            let mut old = Vec::new();
            for id in pending.iter().take(max) {
                if self.decided[id] < newest {
                    old.push(*id);
                } else {
                    newest = self.decided[id];
                }
            }
            if old.is_empty() {
                return;
            }
            pending.retain(|id| !old.contains(id));
            self.delivered.extend(old);
        }
    }
}

fn tenants() -> Vec<TenantId> {
    (0..3)
        .map(|i| Uuid::from_u128(0x1000 + i as u128))
        .collect()
}

fn open(dir: &std::path::Path) -> Queue {
    Queue::open(
        dir,
        StoreOptions {
            cache_capacity_mb: 8,
            ..Default::default()
        },
    )
    .expect("open store")
}

/// Where a case's store lives: a sled directory, or a schema of the test PostgreSQL server.
enum At {
    Sled(tempfile::TempDir),
    Postgres(statusd::store::pg::PgOptions),
}

impl At {
    fn sled() -> At {
        At::Sled(tempfile::tempdir().unwrap())
    }

    /// A fresh schema on the database at `url` (a test server, or PgBouncer in front of it).
    fn postgres(url: &str) -> At {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        At::Postgres(common::pg::options(url, &format!("model_{n}")))
    }

    async fn open(&self) -> Queue {
        let options = StoreOptions {
            cache_capacity_mb: 8,
            ..Default::default()
        };
        match self {
            At::Sled(dir) => Queue::open(dir.path(), options).expect("open store"),
            At::Postgres(pg) => Queue::open_postgres(pg, options)
                .await
                .expect("open the PostgreSQL store"),
        }
    }
}

fn run_case(at: At, ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ts = tenants();
        let mut q = Some(at.open().await);
        let mut model = Model::default();
        let mut in_flight: HashMap<usize, Batch> = HashMap::new();
        for op in ops {
            let queue = q.as_ref().unwrap();
            match op {
                Op::Enqueue { tenant, n, key } => {
                    let events: Vec<NewEvent> = (0..n)
                        .map(|i| NewEvent {
                            tenant_id: ts[tenant],
                            kind: EventKind::Activation,
                            category: "activation".into(),
                            action: "activated integration".into(),
                            idempotency_key: if i == 0 {
                                key.map(|k| format!("key-{k}"))
                            } else {
                                None
                            },
                            occurred_at_ms: None,
                            account: None,
                        })
                        .collect();
                    let out = queue.enqueue(events).await.unwrap();
                    assert_eq!(out.len(), n);
                    for (i, o) in out.iter().enumerate() {
                        let k = if i == 0 { key } else { None };
                        match (k.and_then(|k| model.keys.get(&k)), o) {
                            (Some(orig), statusd::store::Enqueued::Duplicate(id)) => {
                                assert_eq!(orig, id)
                            }
                            (None, statusd::store::Enqueued::Accepted(id)) => {
                                let rec = queue.event(id).await.unwrap().unwrap();
                                model.decided.insert(*id, rec.decided_at());
                                model.pending.entry(tenant).or_default().push_back(*id);
                                if let Some(k) = k {
                                    model.keys.insert(k, *id);
                                }
                            }
                            (expected, got) => {
                                panic!("idempotency mismatch: model {expected:?}, store {got:?}")
                            }
                        }
                    }
                }
                Op::Take { tenant, max } => {
                    if !in_flight.contains_key(&tenant) {
                        model.set_aside_older_decisions(tenant, max);
                    }
                    let took = queue.take_batch(&ts[tenant], max).await.unwrap();
                    let model_pending = model.pending.get(&tenant).cloned().unwrap_or_default();
                    match took {
                        Take::Ready(batch) => {
                            assert!(
                                !in_flight.contains_key(&tenant),
                                "second batch while one is in flight"
                            );
                            let expected: Vec<Uuid> =
                                model_pending.iter().take(max).copied().collect();
                            assert_eq!(
                                batch.ids(),
                                expected,
                                "batch is not the oldest pending in order"
                            );
                            in_flight.insert(tenant, batch);
                        }
                        Take::Busy => assert!(in_flight.contains_key(&tenant)),
                        Take::Empty => {
                            assert!(model_pending.is_empty());
                            assert!(!in_flight.contains_key(&tenant));
                        }
                        Take::NotBefore(_) => panic!("no backoff is ever set in the future here"),
                    }
                }
                Op::Ack { tenant } => {
                    if let Some(batch) = in_flight.remove(&tenant) {
                        queue.ack_delivered(&batch).await.unwrap();
                        let newest = batch.ids().iter().map(|id| model.decided[id]).max();
                        if let Some(d) = newest {
                            let last = model.last_sent.entry(tenant).or_insert(d);
                            *last = (*last).max(d);
                        }
                        let p = model.pending.get_mut(&tenant).unwrap();
                        for id in batch.ids() {
                            assert_eq!(p.pop_front(), Some(id));
                            model.delivered.push(id);
                        }
                    }
                }
                Op::Fail { tenant } => {
                    if let Some(batch) = in_flight.remove(&tenant) {
                        queue
                            .mark_failed(&batch, "boom", now_ms() - 1)
                            .await
                            .unwrap();
                    }
                }
                Op::Dead { tenant } => {
                    if let Some(batch) = in_flight.remove(&tenant) {
                        queue.dead_letter(&batch, "refused").await.unwrap();
                        let p = model.pending.get_mut(&tenant).unwrap();
                        for id in batch.ids() {
                            assert_eq!(p.pop_front(), Some(id));
                            model.dead.push(id);
                        }
                    }
                }
                Op::RetryDead { pick } => {
                    if !model.dead.is_empty() {
                        let id = model.dead.remove(pick % model.dead.len());
                        assert!(queue.retry_dead(&id).await.unwrap());
                        let rec = queue.event(&id).await.unwrap().unwrap();
                        let tenant = ts.iter().position(|t| *t == rec.tenant_id).unwrap();
                        model.pending.entry(tenant).or_default().push_back(id);
                    }
                }
                Op::PurgeDead { pick } => {
                    if !model.dead.is_empty() {
                        let id = model.dead.remove(pick % model.dead.len());
                        assert!(queue.purge_dead(&id).await.unwrap());
                        assert!(queue.event(&id).await.unwrap().is_none());
                    }
                }
                Op::Reopen => {
                    in_flight.clear();
                    drop(q.take());
                    q = Some(at.open().await);
                }
            }
            // Invariants after every step.
            let queue = q.as_ref().unwrap();
            let stats = queue.stats();
            let model_depth: usize = model.pending.values().map(|p| p.len()).sum();
            assert_eq!(stats.depth as usize, model_depth, "depth counter");
            assert_eq!(
                stats.dead_letters as usize,
                model.dead.len(),
                "dead counter"
            );
            assert_eq!(
                queue.recount().await.unwrap(),
                (model_depth as u64, model.dead.len() as u64)
            );
            for (t, p) in &model.pending {
                assert_eq!(queue.pending_count(&ts[*t]).await.unwrap(), p.len());
            }
            // The in-memory heads agree with the pending keys.
            assert_eq!(
                stats.oldest_pending_accepted_ms.is_some(),
                model_depth > 0,
                "oldest pending"
            );
            let mut with_pending: Vec<TenantId> = model
                .pending
                .iter()
                .filter(|(_, p)| !p.is_empty())
                .map(|(t, _)| ts[*t])
                .collect();
            with_pending.sort();
            assert_eq!(queue.pending_tenants(), with_pending);
        }
        // Everything the model holds is in the store with the right state.
        let queue = q.as_ref().unwrap();
        for id in &model.delivered {
            assert_eq!(
                queue.event(id).await.unwrap().unwrap().state,
                EventState::Delivered
            );
        }
        for id in &model.dead {
            assert_eq!(
                queue.event(id).await.unwrap().unwrap().state,
                EventState::Dead
            );
        }
        let dead_listed: Vec<Uuid> = queue
            .dead_letters(1000)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        let mut want = model.dead.clone();
        want.sort();
        let mut got = dead_listed;
        got.sort();
        assert_eq!(got, want);
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn queue_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run_case(At::sled(), ops);
    }
}

/// The same contract on the PostgreSQL backend: one real server the test starts, a fresh schema
/// per case.
#[test]
fn postgres_queue_matches_model() {
    let Some(server) = common::pg::PgServer::start() else {
        return;
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 32,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            run_case(At::postgres(&server.url()), ops);
            Ok(())
        })
        .unwrap();
}

/// The same contract through PgBouncer in transaction pooling mode (5 server connections):
/// nothing of statusd's may rely on a session (no startup options, no session `SET`, no
/// statement prepared in one transaction and used in another).
#[test]
fn postgres_through_pgbouncer_in_transaction_mode_matches_model() {
    let Some(server) = common::pg::PgServer::start() else {
        return;
    };
    let Some(bouncer) = common::pg::PgBouncer::start(&server) else {
        return;
    };
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            run_case(At::postgres(&bouncer.url()), ops);
            Ok(())
        })
        .map_err(|e| format!("{e}\npgbouncer's log:\n{}", bouncer.log()))
        .unwrap();
}

#[tokio::test]
async fn in_flight_events_return_to_queued_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Uuid::from_u128(7);
    let ids: Vec<Uuid> = {
        let q = open(dir.path());
        let out = q
            .enqueue(
                (0..5)
                    .map(|i| NewEvent {
                        tenant_id: tenant,
                        kind: if i % 2 == 0 {
                            EventKind::Activation
                        } else {
                            EventKind::Deactivation
                        },
                        category: "activation".into(),
                        action: format!("action {i}"),
                        idempotency_key: None,
                        occurred_at_ms: None,
                        account: None,
                    })
                    .collect(),
            )
            .await
            .unwrap();
        let Take::Ready(batch) = q.take_batch(&tenant, 3).await.unwrap() else {
            panic!("expected a batch")
        };
        assert_eq!(
            q.event(&batch.events[0].id).await.unwrap().unwrap().state,
            EventState::InFlight
        );
        q.sync().await.unwrap();
        out.iter().map(|o| o.id()).collect()
    };
    let q = open(dir.path());
    for id in &ids {
        assert_eq!(
            q.event(id).await.unwrap().unwrap().state,
            EventState::Queued
        );
    }
    let Take::Ready(batch) = q.take_batch(&tenant, 10).await.unwrap() else {
        panic!("expected a batch")
    };
    assert_eq!(batch.ids(), ids);
}

#[tokio::test]
async fn compaction_removes_delivered_after_retention_and_keeps_pending() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(
        dir.path(),
        StoreOptions {
            cache_capacity_mb: 8,
            delivered_retention: std::time::Duration::from_secs(60),
            ..Default::default()
        },
    )
    .unwrap();
    let tenant = Uuid::from_u128(9);
    let ev = |k: &str| NewEvent {
        tenant_id: tenant,
        kind: EventKind::Activation,
        category: "activation".into(),
        action: "activated integration".into(),
        idempotency_key: Some(k.into()),
        occurred_at_ms: None,
        account: None,
    };
    let first = q.enqueue(vec![ev("a"), ev("b")]).await.unwrap();
    let Take::Ready(batch) = q.take_batch(&tenant, 1).await.unwrap() else {
        panic!()
    };
    q.ack_delivered(&batch).await.unwrap();
    // Within retention nothing goes.
    assert_eq!(q.compact(now_ms()).await.unwrap(), 0);
    // Past retention the delivered event goes, the pending one stays; keys live 24h.
    assert_eq!(q.compact(now_ms() + 61_000).await.unwrap(), 1);
    assert!(q.event(&first[0].id()).await.unwrap().is_none());
    assert!(q.event(&first[1].id()).await.unwrap().is_some());
    let again = q.enqueue(vec![ev("a")]).await.unwrap();
    assert_eq!(again[0], statusd::store::Enqueued::Duplicate(first[0].id()));
    // After the idempotency window the key is forgotten.
    q.compact(now_ms() + 25 * 3600 * 1000).await.unwrap();
    let fresh = q.enqueue(vec![ev("a")]).await.unwrap();
    assert!(matches!(fresh[0], statusd::store::Enqueued::Accepted(_)));
}

#[tokio::test]
async fn backoff_hides_the_head_until_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let tenant = Uuid::from_u128(11);
    q.enqueue(vec![NewEvent {
        tenant_id: tenant,
        kind: EventKind::Custom,
        category: "usage".into(),
        action: "synced".into(),
        idempotency_key: None,
        occurred_at_ms: None,
        account: None,
    }])
    .await
    .unwrap();
    let Take::Ready(batch) = q.take_batch(&tenant, 10).await.unwrap() else {
        panic!()
    };
    let later = now_ms() + 60_000;
    q.mark_failed(&batch, "503 Service Unavailable", later)
        .await
        .unwrap();
    match q.take_batch(&tenant, 10).await.unwrap() {
        Take::NotBefore(at) => assert_eq!(at, later),
        other => panic!("expected NotBefore, got {other:?}"),
    }
    let rec = q.event(&batch.events[0].id).await.unwrap().unwrap();
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.last_error.as_deref(), Some("503 Service Unavailable"));
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("statusd").unwrap();
        let mut k = vec![b'm'];
        k.extend_from_slice(b"schema");
        tree.insert(k, &99u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Queue::open(dir.path(), StoreOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

#[tokio::test]
async fn layout_1_store_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Uuid::from_u128(7);
    let ids: Vec<Uuid> = {
        let q = Queue::open(dir.path(), StoreOptions::default()).unwrap();
        let out = q
            .enqueue(
                (0..3)
                    .map(|i| NewEvent {
                        tenant_id: tenant,
                        kind: EventKind::Custom,
                        category: "usage".into(),
                        action: format!("a{i}"),
                        idempotency_key: None,
                        occurred_at_ms: None,
                        account: None,
                    })
                    .collect(),
            )
            .await
            .unwrap();
        out.iter().map(|o| o.id()).collect()
    };
    // Make it look as layout 1 left it at a crash: an `o` key per pending event, the first
    // event in flight (an `f` key and its record saying so), schema 1.
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("statusd").unwrap();
        for (n, id) in ids.iter().enumerate() {
            let mut o = vec![b'o'];
            o.extend_from_slice(&(n as u64 + 1).to_be_bytes());
            tree.insert(o, id.as_bytes().as_slice()).unwrap();
        }
        let mut e = vec![b'e'];
        e.extend_from_slice(ids[0].as_bytes());
        let mut rec: serde_json::Value =
            serde_json::from_slice(&tree.get(&e).unwrap().unwrap()).unwrap();
        rec["state"] = "in_flight".into();
        tree.insert(&e, serde_json::to_vec(&rec).unwrap()).unwrap();
        let mut f = vec![b'f'];
        f.extend_from_slice(ids[0].as_bytes());
        tree.insert(f, b"x".as_slice()).unwrap();
        tree.insert(b"mschema".as_slice(), &1u64.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    {
        let q = Queue::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            q.event(&ids[0]).await.unwrap().unwrap().state,
            EventState::Queued
        );
        assert!(q.stats().oldest_pending_accepted_ms.is_some());
        let Take::Ready(batch) = q.take_batch(&tenant, 10).await.unwrap() else {
            panic!("the migrated events are pending")
        };
        assert_eq!(batch.ids(), ids, "order kept");
        q.ack_delivered(&batch).await.unwrap();
        assert_eq!(q.stats().depth, 0);
        assert!(q.stats().oldest_pending_accepted_ms.is_none());
    }
    let db = sled::open(dir.path()).unwrap();
    let tree = db.open_tree("statusd").unwrap();
    assert_eq!(tree.scan_prefix([b'o']).count(), 0);
    assert_eq!(tree.scan_prefix([b'f']).count(), 0);
    assert_eq!(
        tree.get(b"mschema").unwrap().unwrap().as_ref(),
        &statusd::store::SCHEMA_VERSION.to_be_bytes()
    );
}

fn one_event(tenant: Uuid, key: Option<&str>) -> NewEvent {
    NewEvent {
        tenant_id: tenant,
        kind: EventKind::Activation,
        category: "activation".into(),
        action: "activated integration".into(),
        idempotency_key: key.map(str::to_string),
        occurred_at_ms: None,
        account: None,
    }
}

#[tokio::test]
async fn a_damaged_idempotency_record_is_an_error_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("statusd").unwrap();
        // Shorter than the 16-byte event id it should start with.
        tree.insert(b"idamaged".as_slice(), b"abc".as_slice())
            .unwrap();
        db.flush().unwrap();
    }
    let q = Queue::open(dir.path(), StoreOptions::default()).unwrap();
    let tenant = Uuid::from_u128(11);
    let err = q
        .enqueue(vec![one_event(tenant, Some("damaged"))])
        .await
        .expect_err("a damaged record cannot be answered");
    assert!(err.to_string().contains("idempotency record"), "{err}");
    // The committer is still running and later calls are answered.
    assert!(q.healthy());
    let out = q
        .enqueue(vec![one_event(tenant, Some("fine"))])
        .await
        .unwrap();
    assert!(matches!(out[0], statusd::store::Enqueued::Accepted(_)));
    assert_eq!(q.stats().depth, 1);
}

#[tokio::test]
async fn a_batch_dropped_unsettled_goes_back_to_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), StoreOptions::default()).unwrap();
    let tenant = Uuid::from_u128(12);
    let out = q
        .enqueue(vec![one_event(tenant, None), one_event(tenant, None)])
        .await
        .unwrap();
    let ids: Vec<Uuid> = out.iter().map(|o| o.id()).collect();
    let Take::Ready(batch) = q.take_batch(&tenant, 10).await.unwrap() else {
        panic!("expected a batch")
    };
    assert!(matches!(
        q.take_batch(&tenant, 10).await.unwrap(),
        Take::Busy
    ));
    assert_eq!(q.stats().in_flight, 2);
    // A lane that panics drops its batch without settling it.
    let lane = std::thread::spawn(move || {
        let _held = batch;
        panic!("lane failed");
    });
    assert!(lane.join().is_err());
    assert_eq!(q.stats().in_flight, 0);
    assert_eq!(
        q.event(&ids[0]).await.unwrap().unwrap().state,
        EventState::Queued
    );
    let Take::Ready(again) = q.take_batch(&tenant, 10).await.unwrap() else {
        panic!("the tenant is free again")
    };
    assert_eq!(again.ids(), ids);
}

#[tokio::test]
async fn a_new_store_directory_is_for_statusd_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var").join("statusd");
    let _q = Queue::open(&path, StoreOptions::default()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
}

#[tokio::test]
async fn a_next_attempt_persisted_far_ahead_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(
        dir.path(),
        StoreOptions {
            max_retry_delay: std::time::Duration::from_secs(300),
            ..Default::default()
        },
    )
    .unwrap();
    let soon = now_ms() + 60_000;
    // Ten days ahead: a clock that ran ahead, or a store restored from another host.
    let far = now_ms() + 10 * 24 * 3600 * 1000;
    let (near_tenant, far_tenant) = (Uuid::from_u128(21), Uuid::from_u128(22));
    for (tenant, at) in [(near_tenant, soon), (far_tenant, far)] {
        q.enqueue(vec![one_event(tenant, None)]).await.unwrap();
        let Take::Ready(batch) = q.take_batch(&tenant, 10).await.unwrap() else {
            panic!("expected a batch")
        };
        q.mark_failed(&batch, "503", at).await.unwrap();
    }
    // Within the longest retry wait: trusted.
    assert!(matches!(
        q.take_batch(&near_tenant, 10).await.unwrap(),
        Take::NotBefore(at) if at == soon
    ));
    // Beyond it: tried now.
    assert!(matches!(
        q.take_batch(&far_tenant, 10).await.unwrap(),
        Take::Ready(_)
    ));
}

/// A tenant state written by an older version dated its intended state when it was accepted,
/// whatever its `occurred_at`. The next decision replaces it as it did then, so intended state
/// and delivery agree; from then on decisions are compared by their own dates.
#[tokio::test]
async fn a_tenant_state_of_an_older_version_is_replaced_by_the_next_decision() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = Uuid::from_u128(11);
    let t0 = now_ms() - 60_000;
    let decision = |kind: EventKind, occurred: i64| NewEvent {
        kind,
        occurred_at_ms: Some(occurred),
        ..one_event(tenant, None)
    };
    {
        let q = Queue::open(dir.path(), StoreOptions::default()).unwrap();
        q.enqueue(vec![decision(EventKind::Activation, t0)])
            .await
            .unwrap();
        let Take::Ready(batch) = q.take_batch(&tenant, 10).await.unwrap() else {
            panic!("the activation is pending")
        };
        q.ack_delivered(&batch).await.unwrap();
    }
    // As an older version left it: the activation (which occurred at t0) dated when it was
    // accepted, 10 s later, and no date of the decision sent.
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("statusd").unwrap();
        let mut k = vec![b't'];
        k.extend_from_slice(tenant.as_bytes());
        let mut state: serde_json::Value =
            serde_json::from_slice(&tree.get(&k).unwrap().unwrap()).unwrap();
        assert_eq!(state["dated"], true, "{state}");
        let state = state.as_object_mut().unwrap();
        state.remove("dated");
        state.remove("last_sent_at_ms");
        state.insert("intended_at_ms".into(), (t0 + 10_000).into());
        tree.insert(&k, serde_json::to_vec(&state).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let q = Queue::open(dir.path(), StoreOptions::default()).unwrap();
    // A deactivation that occurred 5 s after the activation, before its acceptance: the
    // intended state, and sent.
    // One decision accepted: its id, and the tenant's state after it.
    let accept = |ev: NewEvent| {
        let q = q.clone();
        async move {
            let id = q.enqueue(vec![ev]).await.unwrap()[0].id();
            (id, q.tenant_state(&tenant).await.unwrap().unwrap())
        }
    };
    let (off, state) = accept(decision(EventKind::Deactivation, t0 + 5_000)).await;
    assert_eq!(
        state.intended,
        Some(statusd::store::IntegrationState::Inactive)
    );
    assert_eq!(state.intended_at_ms, Some(t0 + 5_000));
    let Take::Ready(batch) = q.take_batch(&tenant, 10).await.unwrap() else {
        panic!("the deactivation is pending")
    };
    assert_eq!(batch.ids(), vec![off]);
    q.ack_delivered(&batch).await.unwrap();
    // From now on by date: an activation that occurred before the deactivation changes
    // nothing and is set aside.
    let (late, state) = accept(decision(EventKind::Activation, t0 + 1_000)).await;
    assert_eq!(
        state.intended,
        Some(statusd::store::IntegrationState::Inactive)
    );
    assert!(matches!(
        q.take_batch(&tenant, 10).await.unwrap(),
        Take::Empty
    ));
    let rec = q.event(&late).await.unwrap().unwrap();
    assert_eq!(rec.state, EventState::Delivered);
    assert_eq!(rec.last_error.as_deref(), Some(statusd::store::SUPERSEDED));
}
