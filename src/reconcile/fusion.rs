//! `fusion-branding`: every subscription of every configured Fusion tenant (all pages) shows the
//! branding intended. Only the properties set in `[fusion.branding]` (and a tenant's override)
//! are managed; a part that differs is written whole: what the platform holds, with the intent
//! set over it, and without the secret properties it shows masked (a masked value is never
//! drift and never written back). Each subscription that fails has its own backoff.

use reqwest::{Method, StatusCode};

use super::branding::ms_text;
use super::*;
use crate::config::{merge_into, FusionBranding, FUSION_MASK};
use crate::platform::{FusionClient, PlatformError};

/// The name of the store document that keeps the Fusion session (its refresh token, sealed).
const SESSION_DOC: &str = "fusion_session";
/// The key whose shard the Fusion work belongs to on a shared store.
const FUSION_SHARD_KEY: &str = "fusion";

#[derive(Serialize, Deserialize)]
struct KeptSession {
    refresh_sealed: Option<String>,
}

/// One subscription to reconcile.
#[derive(Clone, Copy)]
struct Subscription {
    tenant: Uuid,
    id: i64,
}

#[derive(Default)]
struct SubOutcome {
    drift: Vec<DriftItem>,
    actions: Vec<String>,
}

/// The backoff key of a subscription (tenant and id folded into one id).
fn item_key(s: Subscription) -> Uuid {
    Uuid::from_u128(s.tenant.as_u128() ^ (s.id as u128).rotate_left(64))
}

/// The managed leaves of `intent` that differ from `current`: (dotted path, platform, intended).
/// A masked platform value is never a difference.
fn differences(
    intent: &Map<String, Value>,
    current: &Map<String, Value>,
    at: &str,
    out: &mut Vec<(String, Value, Value)>,
) {
    for (k, want) in intent {
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        let have = current.get(k);
        match (want, have) {
            (Value::Object(w), Some(Value::Object(h))) => differences(w, h, &path, out),
            (_, Some(Value::String(s))) if s == FUSION_MASK => {}
            (w, h) if Some(w) != h => {
                out.push((path, h.cloned().unwrap_or(Value::Null), w.clone()))
            }
            _ => {}
        }
    }
}

/// `current` without the values the platform shows masked.
fn without_masked(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(_, v)| !matches!(v, Value::String(s) if s == FUSION_MASK))
        .map(|(k, v)| match v {
            Value::Object(o) => (k.clone(), Value::Object(without_masked(o))),
            other => (k.clone(), other.clone()),
        })
        .collect()
}

/// The path of a part: `general`, `pages`, or `styling?type=<t>`.
fn part_path(fusion: &FusionClient, s: Subscription, part: &str) -> String {
    // The seed prints the write paths as `.../configurations/general` and `.../pages`; those
    // are other resources (general subscription properties). The roles it names
    // (`...configurations.branding.general.update`) show the branding path is meant: reads and
    // writes both use `.../configurations/branding/...`.
    let base = fusion.draas(&format!(
        "/tenants/{}/subscriptions/{}/configurations/branding",
        s.tenant, s.id
    ));
    match part.strip_prefix("styling.") {
        Some(t) => format!("{base}/styling?type={t}"),
        None => format!("{base}/{part}"),
    }
}

/// Why the kept Fusion session could not be sealed again.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("the kept Fusion session: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("a Fusion session is kept, but [fusion] is not configured: its base URL and user are what it is bound to")]
    NotConfigured,
    #[error("the kept Fusion session: {0}")]
    Unopened(#[from] crate::vault::VaultError),
}

/// Seal the kept Fusion session again under the current key (`statusd store rekey`): `Ok(None)`
/// when none is kept, else whether it was sealed again (false: already under the current key).
pub async fn reseal_session(
    queue: &crate::store::Queue,
    settings: &crate::config::Settings,
    key: &crate::vault::SecretKey,
) -> Result<Option<bool>, ResealError> {
    let kept: Option<KeptSession> = queue.get_doc(SESSION_DOC).await?;
    let Some(sealed) = kept.and_then(|k| k.refresh_sealed) else {
        return Ok(None);
    };
    let binding = session_binding(settings).ok_or(ResealError::NotConfigured)?;
    let opened = key.open_bound(&binding, &sealed)?;
    if !opened.stale {
        return Ok(Some(false));
    }
    let doc = KeptSession {
        refresh_sealed: Some(key.seal_bound(&binding, opened.secret.expose())),
    };
    queue.put_doc(SESSION_DOC, &doc).await?;
    Ok(Some(true))
}

/// What the kept Fusion session is bound to: the Fusion it is for, and the user.
fn session_binding(settings: &crate::config::Settings) -> Option<crate::vault::Binding<'_>> {
    settings
        .fusion
        .as_ref()
        .map(|f| crate::vault::Binding::FusionSession {
            base_url: &f.base_url,
            user: &f.username,
        })
}

/// An answer that retrying cannot mend.
fn permanent(call: String, status: Option<u16>, message: String) -> ReconcileError {
    ReconcileError::Platform(PlatformError {
        class: ErrorClass::Permanent,
        status,
        call,
        message,
        retry_after: None,
        envelope: None,
    })
}

fn object_of(call: &str, body: &[u8]) -> Result<Map<String, Value>, ReconcileError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(permanent(
            call.to_string(),
            None,
            "the answer is not a JSON object of properties".into(),
        )),
    }
}

/// The `fusion-branding` reconciler: its Fusion client (whose session the API's login shares),
/// the session taken in from the store once, and its subscriptions' backoff.
pub(super) struct FusionReconciler {
    client: FusionClient,
    session: tokio::sync::OnceCell<()>,
    items: ItemBackoffs,
}

#[async_trait::async_trait]
impl Reconciler for FusionReconciler {
    fn kind(&self) -> Kind {
        Kind::FusionBranding
    }

    async fn reconcile(
        &self,
        cx: &Context,
        report: &mut Report,
        run: &Run<'_>,
    ) -> Result<(), ReconcileError> {
        self.run(cx, report, run.scheduled).await
    }
}

impl FusionReconciler {
    pub(super) fn new(client: FusionClient) -> FusionReconciler {
        FusionReconciler {
            client,
            session: tokio::sync::OnceCell::new(),
            items: ItemBackoffs::default(),
        }
    }

    /// The session kept in the store, taken in once.
    async fn resume(&self, cx: &Context) -> Result<(), ReconcileError> {
        let fusion = self.client.clone();
        let queue = cx.queue.clone();
        let key = cx.settings.store.secret_key.clone();
        let settings = cx.settings.clone();
        self.session
            .get_or_try_init(|| async move {
                let kept: Option<KeptSession> = queue.get_doc(SESSION_DOC).await?;
                let (Some(sealed), Some(key), Some(binding)) = (
                    kept.and_then(|k| k.refresh_sealed),
                    key,
                    session_binding(&settings),
                ) else {
                    return Ok(());
                };
                match key.open_bound(&binding, &sealed) {
                    Ok(opened) => {
                        if opened.stale {
                            let doc = KeptSession {
                                refresh_sealed: Some(
                                    key.seal_bound(&binding, opened.secret.expose()),
                                ),
                            };
                            queue.put_doc(SESSION_DOC, &doc).await?;
                        }
                        fusion.resume(opened.secret).await
                    }
                    Err(e) => tracing::warn!(message = "the kept Fusion session cannot be opened for this Fusion base URL and user with store.secret_key_file; logging in afresh", error = %e),
                }
                Ok::<(), ReconcileError>(())
            })
            .await?;
        Ok(())
    }

    /// Keep the refresh token in the store (sealed) when it changed.
    async fn keep(&self, cx: &Context) -> Result<(), ReconcileError> {
        let fusion = &self.client;
        let Some(refresh) = fusion.take_refresh_change().await else {
            return Ok(());
        };
        let Some(key) = &cx.settings.store.secret_key else {
            tracing::warn!(message = "no store.secret_key_file: the Fusion session is kept in memory only (a restart logs in again)");
            return Ok(());
        };
        let Some(binding) = session_binding(&cx.settings) else {
            return Ok(());
        };
        let doc = KeptSession {
            refresh_sealed: refresh.map(|r| key.seal_bound(&binding, r.expose())),
        };
        cx.queue.put_doc(SESSION_DOC, &doc).await?;
        Ok(())
    }

    /// `statusd fusion login`: log in now (with the second factor's code, if given).
    pub(super) async fn login(
        &self,
        cx: &Context,
        code: Option<&str>,
    ) -> Result<crate::platform::LoginOutcome, ReconcileError> {
        self.resume(cx).await?;
        let outcome = self.client.login_now(code).await?;
        self.keep(cx).await?;
        self.refresh_gauge(cx).await;
        Ok(outcome)
    }

    /// The Fusion session's state, when Fusion is configured.
    pub(super) async fn state(&self) -> crate::platform::FusionState {
        self.client.state().await
    }

    async fn refresh_gauge(&self, cx: &Context) {
        let required = matches!(
            self.state().await,
            crate::platform::FusionState::CodeRequired | crate::platform::FusionState::Refused
        );
        cx.metrics.fusion_login_required.set(i64::from(required));
    }

    async fn run(
        &self,
        cx: &Context,
        report: &mut Report,
        scheduled: bool,
    ) -> Result<(), ReconcileError> {
        // On a shared store, the replica holding the shard of `fusion` runs it.
        let queue = &cx.queue;
        let slot = (crate::store::now_ms() + 500) / 1000;
        if !queue.acts_for(Some(FUSION_SHARD_KEY))
            || (scheduled
                && !queue
                    .claim_slot("fusion-branding", Some(FUSION_SHARD_KEY), slot)
                    .await)
        {
            report.details.owned_elsewhere = Some(true);
            return Ok(());
        }
        self.resume(cx).await?;
        let result = self.run_subscriptions(cx, report, scheduled).await;
        self.keep(cx).await?;
        self.refresh_gauge(cx).await;
        result
    }

    async fn run_subscriptions(
        &self,
        cx: &Context,
        report: &mut Report,
        scheduled: bool,
    ) -> Result<(), ReconcileError> {
        let settings = cx
            .settings
            .fusion
            .as_ref()
            .ok_or(ReconcileError::NotConfigured("[fusion]"))?;
        let fusion = self.client.clone();
        let mut subs = Vec::new();
        for tenant in &settings.tenants {
            subs.extend(
                self.fusion_subscriptions(&fusion, *tenant, settings.page_size)
                    .await?,
            );
        }
        report.details.tenants = Some(settings.tenants.len());
        report.details.subscriptions = Some(subs.len());
        let now = now_ms();
        let dry_run = report.dry_run;
        let limit = cx.settings.platform.max_concurrency.max(1);
        let mut set: JoinSet<(Subscription, Result<SubOutcome, ReconcileError>)> = JoinSet::new();
        let mut pending = subs.into_iter();
        let mut auth_failure = None;
        loop {
            while set.len() < limit && auth_failure.is_none() {
                let Some(s) = pending.next() else { break };
                if scheduled && !dry_run {
                    if let Some(b) = self.items.waiting(item_key(s), now) {
                        report.skipped.push(ItemNote {
                            tenant_id: s.tenant,
                            message: format!(
                                "subscription {}: in backoff after {} failure(s); next try at {}",
                                s.id,
                                b.failures,
                                ms_text(b.not_before_ms)
                            ),
                        });
                        continue;
                    }
                }
                let intent = settings.intent_of(&s.tenant);
                let fusion = fusion.clone();
                set.spawn(
                    async move { (s, brand_subscription(&fusion, s, &intent, dry_run).await) },
                );
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            let (s, result) = joined.map_err(|e| ReconcileError::Task(e.to_string()))?;
            match result {
                Ok(o) => {
                    self.items.succeeded(item_key(s));
                    report.drift.extend(o.drift);
                    report.actions.extend(o.actions);
                }
                // A refused login fails the whole run: every subscription would fail the same.
                Err(ReconcileError::Platform(e)) if e.class == ErrorClass::Auth => {
                    auth_failure = Some(e);
                }
                Err(error) => {
                    if !dry_run {
                        self.items.failed(item_key(s));
                    }
                    report.errors.push(ItemNote {
                        tenant_id: s.tenant,
                        message: format!("subscription {}: {error}", s.id),
                    });
                }
            }
        }
        match auth_failure {
            Some(e) => Err(ReconcileError::Platform(e)),
            None => Ok(()),
        }
    }

    /// Every subscription of a tenant, page by page (404: it has none).
    async fn fusion_subscriptions(
        &self,
        fusion: &FusionClient,
        tenant: Uuid,
        page_size: u64,
    ) -> Result<Vec<Subscription>, ReconcileError> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            pages: u64,
            #[serde(default)]
            subscriptions: Vec<Sub>,
        }
        #[derive(Deserialize)]
        struct Sub {
            id: i64,
        }
        let mut out = Vec::new();
        let mut page = 1u64;
        loop {
            let path = fusion.draas(&format!(
                "/tenants/{tenant}/subscriptions?page={page}&page_size={page_size}"
            ));
            let (status, body) = fusion.call(Method::GET, &path, None).await?;
            if status == StatusCode::NOT_FOUND {
                break;
            }
            let p: Page = serde_json::from_slice(&body).map_err(|e| {
                permanent(
                    format!("GET {path}"),
                    Some(status.as_u16()),
                    format!("not a page of subscriptions: {e}"),
                )
            })?;
            out.extend(
                p.subscriptions
                    .iter()
                    .map(|s| Subscription { tenant, id: s.id }),
            );
            // A page past the last, or an empty one, ends the walk (never a loop).
            if page >= p.pages || p.subscriptions.is_empty() || page >= 100_000 {
                break;
            }
            page += 1;
        }
        Ok(out)
    }
}

async fn brand_subscription(
    fusion: &FusionClient,
    s: Subscription,
    intent: &FusionBranding,
    dry_run: bool,
) -> Result<SubOutcome, ReconcileError> {
    let mut out = SubOutcome::default();
    for (part, wanted) in &intent.parts {
        if wanted.is_empty() {
            continue;
        }
        let path = part_path(fusion, s, part);
        let (status, body) = fusion.call(Method::GET, &path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Err(permanent(
                format!("GET {path}"),
                Some(404),
                "no such subscription or configuration".into(),
            ));
        }
        let current = object_of(&format!("GET {path}"), &body)?;
        let mut diffs = Vec::new();
        differences(wanted, &current, "", &mut diffs);
        if diffs.is_empty() {
            continue;
        }
        for (field, platform, intended) in diffs {
            out.drift.push(DriftItem {
                tenant_id: s.tenant,
                field: format!("subscription {} {part} {field}", s.id),
                platform,
                intended,
            });
        }
        if dry_run {
            continue;
        }
        let mut write = without_masked(&current);
        merge_into(&mut write, wanted);
        let write_path = match part.strip_prefix("styling.") {
            Some(t) => {
                write.insert("type".into(), json!(t));
                path.split('?').next().unwrap_or(&path).to_string()
            }
            None => path.clone(),
        };
        fusion
            .call(Method::PUT, &write_path, Some(&Value::Object(write)))
            .await?;
        out.actions.push(format!(
            "tenant {} subscription {}: wrote {part}",
            s.tenant, s.id
        ));
    }
    Ok(out)
}
