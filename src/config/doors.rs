//! The keys that guard doors: the API's tokens and roles, and the store's sealing keys.

use super::reader::Reader;
use super::*;

impl Reader {
    /// The key of `store.secret_key_file`, or of the systemd credential `secret_key`; with the
    /// key of `store.previous_secret_key_file` (or the credential `previous_secret_key`) to open
    /// what it sealed, during a rotation.
    pub(super) fn secret_key(&mut self) -> (Option<PathBuf>, Option<SecretKey>) {
        const KEY: &str = "store.secret_key_file";
        const PREVIOUS: &str = "store.previous_secret_key_file";
        let (path, key) = self.key_file(KEY, "secret_key");
        let (_, previous) = self.key_file(PREVIOUS, "previous_secret_key");
        match (key, previous) {
            (Some(k), Some(p)) if k.id() == p.id() => {
                self.problem(PREVIOUS, "is the same key as store.secret_key_file: give the key being replaced, or leave it unset");
                (path, Some(k))
            }
            (Some(k), Some(p)) => (path, Some(k.with_previous(p))),
            (None, Some(_)) if path.is_none() => {
                self.problem(PREVIOUS, "is set without store.secret_key_file: the previous key only opens; set the current key too");
                (path, None)
            }
            (k, _) => (path, k),
        }
    }

    /// A key from the file at `key`, or from the systemd credential `credential`.
    fn key_file(&mut self, key: &str, credential: &str) -> (Option<PathBuf>, Option<SecretKey>) {
        let path = match self.string(key) {
            Some(p) if p.trim().is_empty() => {
                self.problem(key, "is empty (remove the key to leave it unset)");
                return (None, None);
            }
            Some(p) => PathBuf::from(p),
            None => match self.credentials_dir.as_ref().map(|d| d.join(credential)) {
                Some(p) if p.exists() => p,
                _ => return (None, None),
            },
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => match SecretKey::from_text(&text) {
                Ok(k) => (Some(path), Some(k)),
                Err(e) => {
                    self.problem(key, format!("{}: {e}", path.display()));
                    (Some(path), None)
                }
            },
            Err(e) => {
                self.problem(key, format!("cannot read {}: {e}", path.display()));
                (Some(path), None)
            }
        }
    }

    pub(super) fn api(&mut self) -> ApiSettings {
        /// The shortest API token taken: a guessable one is no door.
        const MIN_TOKEN_CHARS: usize = 16;
        let listen = match self.string("api.listen") {
            None => SocketAddr::from(([127, 0, 0, 1], 8750)),
            Some(text) => match text.trim().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.problem(
                        "api.listen",
                        format!("not an address: {text:?} (expected host:port, e.g. \"127.0.0.1:8750\")"),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 8750))
                }
            },
        };
        let token = self.secret("api.token", Some("api_token"));
        if token.is_none() && !listen.ip().is_loopback() && !self.has_problem_prefix("api.token") {
            self.problem(
                "api.token",
                format!(
                    "required because api.listen ({listen}) is not a loopback address: set api.token_file or api.token"
                ),
            );
        }
        let admin_token = self.secret("api.admin_token", Some("api_admin_token"));
        for (key, t) in [("api.token", &token), ("api.admin_token", &admin_token)] {
            if let Some(t) = t {
                let n = t.expose().chars().count();
                if n < MIN_TOKEN_CHARS && !self.has_problem_prefix(key) {
                    self.problem(
                        key,
                        format!("is {n} characters; a token is at least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 24`)"),
                    );
                }
            }
        }
        if let (Some(t), Some(a)) = (&token, &admin_token) {
            if t.expose() == a.expose() {
                self.problem(
                    "api.admin_token",
                    "is the same as api.token: give the admin role its own token (or leave it unset, and api.token does both)",
                );
            }
        }
        ApiSettings {
            listen,
            token,
            admin_token,
            max_connections: self.u64_in("api.max_connections", 512, 4, 65_536) as usize,
            read_timeout: self.duration("api.read_timeout", "10s"),
        }
    }
}
