//! The emulated platform's state: the tenant tree, brands, logos, issued tokens, faults and
//! what was received.

use super::*;

#[derive(Debug, Clone, Serialize)]
pub(super) struct SbTenant {
    pub(super) id: Uuid,
    pub(super) parent_id: Uuid,
    pub(super) version: i64,
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) enabled: bool,
    pub(super) brand_enabled: bool,
    pub(super) created_at: String,
    pub(super) updated_at: String,
    #[serde(skip)]
    pub(super) updated_ms: i64,
    pub(super) deleted_at: Option<String>,
    pub(super) customer_type: String,
    pub(super) language: String,
    pub(super) has_children: bool,
}

pub(super) struct Cursor {
    pub(super) remaining: Vec<Uuid>,
}

#[derive(Default, Debug, Clone, Serialize)]
pub struct SandboxStats {
    pub requests: u64,
    pub by_endpoint: HashMap<String, u64>,
    pub by_status: HashMap<u16, u64>,
    pub tokens_issued: u64,
    pub faults_applied: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
}

/// An API client of the sandbox: its secret and the tenant it was created in.
#[derive(Debug, Clone)]
pub(super) struct SbClient {
    pub(super) secret: String,
    pub(super) tenant_id: Uuid,
}

pub(super) struct SbState {
    pub(super) opts: SandboxOptions,
    pub(super) root: Uuid,
    /// Access tokens: when each expires, and the client it was issued to.
    pub(super) tokens: HashMap<String, (i64, String)>,
    /// API clients by id; the configured one first.
    pub(super) clients: HashMap<String, SbClient>,
    pub(super) issued: Vec<String>,
    pub(super) tenants: Vec<SbTenant>,
    pub(super) index: HashMap<Uuid, usize>,
    pub(super) brands: HashMap<Uuid, Map<String, Value>>,
    pub(super) logos: HashMap<Uuid, Vec<u8>>,
    pub(super) reports: Vec<ReceivedReport>,
    pub(super) faults: VecDeque<Fault>,
    pub(super) cursors: HashMap<String, Cursor>,
    pub(super) stats: SandboxStats,
    pub(super) rng: rand::rngs::StdRng,
    pub(super) smtp_password_writes: u64,
    pub(super) fusion: super::fusion::FusionSb,
}

pub(super) type Shared = Arc<Mutex<SbState>>;

impl SbState {
    pub(super) fn new(opts: SandboxOptions) -> SbState {
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let root = Uuid::from_u128(rng.random());
        // Fusion has its own random source, so it leaves the tenant tree as it was.
        let fusion = super::fusion::FusionSb::new(
            &opts,
            &mut rand::rngs::StdRng::seed_from_u64(opts.seed ^ 0xf0_5105),
        );
        let mut s = SbState {
            opts: opts.clone(),
            root,
            tokens: HashMap::new(),
            clients: HashMap::from([(
                opts.client_id.clone(),
                SbClient {
                    secret: opts.client_secret.clone(),
                    tenant_id: root,
                },
            )]),
            issued: Vec::new(),
            tenants: Vec::new(),
            index: HashMap::new(),
            brands: HashMap::new(),
            logos: HashMap::new(),
            reports: Vec::new(),
            faults: VecDeque::new(),
            cursors: HashMap::new(),
            stats: SandboxStats::default(),
            rng,
            smtp_password_writes: 0,
            fusion,
        };
        s.push_tenant(root, root, "partner", "Sandbox Partner".into());
        s.generate(opts.tenants);
        s
    }

    pub(super) fn push_tenant(&mut self, id: Uuid, parent: Uuid, kind: &str, name: String) {
        let n = self.tenants.len();
        let now = chrono::Utc::now() - chrono::Duration::days(1);
        // Half the timestamps carry no zone, as some platform answers do.
        let stamp = if n % 2 == 0 {
            now.format("%Y-%m-%dT%H:%M:%S").to_string()
        } else {
            now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        self.tenants.push(SbTenant {
            id,
            parent_id: parent,
            version: 1,
            name,
            kind: kind.to_string(),
            enabled: true,
            brand_enabled: false,
            created_at: stamp.clone(),
            updated_at: stamp,
            updated_ms: now.timestamp_millis(),
            deleted_at: None,
            customer_type: "default".into(),
            language: "en".into(),
            has_children: false,
        });
        self.index.insert(id, n);
        if let Some(&p) = self.index.get(&parent) {
            if p != n {
                self.tenants[p].has_children = true;
            }
        }
    }

    /// A tree: partners and folders under the root and under each other, customers under those,
    /// units under customers; a few disabled and a few deleted.
    pub(super) fn generate(&mut self, count: usize) {
        let mut containers = vec![self.root];
        let mut customers = Vec::new();
        for i in 0..count {
            let roll: f64 = self.rng.random();
            let (kind, parent) = if roll < 0.12 || containers.len() < 2 {
                let p = containers[self.rng.random_range(0..containers.len())];
                ("partner", p)
            } else if roll < 0.17 {
                let p = containers[self.rng.random_range(0..containers.len())];
                ("folder", p)
            } else if roll < 0.92 || customers.is_empty() {
                let p = containers[self.rng.random_range(0..containers.len())];
                ("customer", p)
            } else {
                let p = customers[self.rng.random_range(0..customers.len())];
                ("unit", p)
            };
            let id = Uuid::from_u128(self.rng.random());
            self.push_tenant(id, parent, kind, format!("{kind} {i}"));
            match kind {
                "partner" | "folder" => containers.push(id),
                "customer" => customers.push(id),
                _ => {}
            }
            let idx = self.tenants.len() - 1;
            if i % 23 == 7 {
                self.tenants[idx].enabled = false;
            }
            if i % 37 == 11 && kind != "partner" && kind != "folder" {
                self.tenants[idx].deleted_at = Some(self.tenants[idx].updated_at.clone());
            }
        }
    }

    pub(super) fn bump(&mut self, idx: usize) {
        let now = chrono::Utc::now();
        let t = &mut self.tenants[idx];
        t.version += 1;
        t.updated_at = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        t.updated_ms = now.timestamp_millis();
    }

    pub(super) fn mutate(&mut self, tenant: Uuid, change: TenantChange) -> bool {
        let Some(&idx) = self.index.get(&tenant) else {
            return false;
        };
        if let Some(e) = change.enabled {
            self.tenants[idx].enabled = e;
        }
        if let Some(n) = change.name {
            self.tenants[idx].name = n;
        }
        if let Some(d) = change.deleted {
            self.tenants[idx].deleted_at = d.then(now_text);
        }
        self.bump(idx);
        true
    }

    pub(super) fn tenant_json(&self, idx: usize) -> Value {
        let t = &self.tenants[idx];
        let mut v = serde_json::to_value(t).expect("tenant serializes");
        let m = v.as_object_mut().expect("object");
        m.insert("mfa_status".into(), json!("disabled"));
        m.insert("pricing_mode".into(), json!("production"));
        m.insert("ancestral_access".into(), json!(true));
        m.insert("contact".into(), json!({}));
        m.insert("update_lock".into(), json!({"enabled": false}));
        v
    }

    /// Tenant + all descendants, level by level.
    pub(super) fn subtree(&self, root: Uuid) -> Vec<Uuid> {
        let mut children: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for t in &self.tenants {
            if t.id != t.parent_id {
                children.entry(t.parent_id).or_default().push(t.id);
            }
        }
        let mut out = vec![root];
        let mut i = 0;
        while i < out.len() {
            if let Some(c) = children.get(&out[i]) {
                out.extend(c.iter().copied());
            }
            i += 1;
        }
        out
    }
}
