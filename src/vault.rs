//! Secrets kept in the store (the client secrets of accounts added at run time, the Fusion
//! session), sealed with AES-256-GCM under the key of `store.secret_key_file`. Each value gets a
//! fresh random nonce, and everything that decides where it is sent (its kind, the account id,
//! the data-center URL, the client id and the kind of credentials; Fusion's base URL and user) is
//! bound to it as associated data: a record whose address was changed, or a value copied onto
//! another record, does not open. A sealed value names the key that sealed it (`v2.<key id>.`),
//! so the key can change: `store.previous_secret_key_file` still opens what the previous key
//! sealed until `statusd store rekey` has sealed everything again under the current one.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Secret;
pub use crate::config::{SecretKey, KEY_LEN};

/// What a sealed value is bound to: everything that decides where it goes.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// An account's client secret.
    AccountSecret {
        id: &'a str,
        datacenter_url: &'a str,
        client_id: &'a str,
        credentials: &'a str,
    },
    /// The Fusion session's refresh token.
    FusionSession { base_url: &'a str, user: &'a str },
}

impl Binding<'_> {
    /// The associated data: the format, the kind, then each bound value, each length-prefixed
    /// so that no two bindings write the same bytes.
    fn aad(&self) -> Vec<u8> {
        let parts: &[&str] = match self {
            Binding::AccountSecret {
                id,
                datacenter_url,
                client_id,
                credentials,
            } => &["account-secret", id, datacenter_url, client_id, credentials],
            Binding::FusionSession { base_url, user } => &["fusion-session", base_url, user],
        };
        let mut out = b"statusd/v2".to_vec();
        for p in parts {
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p.as_bytes());
        }
        out
    }

    /// What a value sealed before bindings (format 1) was bound to.
    fn legacy_context(&self) -> &str {
        match self {
            Binding::AccountSecret { id, .. } => id,
            Binding::FusionSession { .. } => "fusion",
        }
    }
}

/// A value opened, and whether it should be sealed again: `stale` when it is in the format
/// before bindings or under the previous key (what `statusd store rekey` seals again),
/// `legacy` for the format alone (what a start seals again, once).
#[derive(Debug)]
pub struct Opened {
    pub secret: Secret,
    pub stale: bool,
    pub legacy: bool,
}

const FORMAT: &str = "v2.";

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("the sealed value is not base64 or too short")]
    Malformed,
    #[error("the key cannot open it (another key sealed it, or it was altered)")]
    WrongKey,
    #[error("it was sealed by key {0}, which is neither store.secret_key_file nor store.previous_secret_key_file")]
    UnknownKey(String),
    #[error("it does not open for this record: the record's data-center URL, client id or kind is not what it was sealed for (the record was altered, or the value copied from another)")]
    Unbound,
}

impl VaultError {
    /// The key at hand is not the one (as opposed to a record that was altered).
    pub fn is_key(&self) -> bool {
        !matches!(self, VaultError::Unbound)
    }
}

impl SecretKey {
    pub fn has_previous(&self) -> bool {
        self.previous.is_some()
    }

    /// The key's id: 8 hex digits of a SHA-256 of it, which tells keys apart without telling
    /// anything of them.
    pub fn id(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"statusd key id\0");
        h.update(self.bytes.expose().as_bytes());
        h.finalize()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Seal `plain` under this key, bound to `binding`: `v2.<key id>.<base64 of nonce,
    /// ciphertext and tag>`.
    pub fn seal_bound(&self, binding: &Binding, plain: &str) -> String {
        format!(
            "{FORMAT}{}.{}",
            self.id(),
            self.seal_raw(&binding.aad(), plain)
        )
    }

    /// Open what [`SecretKey::seal_bound`] made for the same binding, under this key or the
    /// previous one; a value of the format before bindings opens for its account id alone
    /// (and is `stale`, to be sealed again).
    pub fn open_bound(&self, binding: &Binding, sealed: &str) -> Result<Opened, VaultError> {
        let Some(rest) = sealed.strip_prefix(FORMAT) else {
            let context = binding.legacy_context().as_bytes();
            let secret = self
                .open_raw(context, sealed)
                .or_else(|e| match &self.previous {
                    Some(p) => p.open_raw(context, sealed),
                    None => Err(e),
                })?;
            return Ok(Opened {
                secret,
                stale: true,
                legacy: true,
            });
        };
        let (kid, body) = rest.split_once('.').ok_or(VaultError::Malformed)?;
        let key = if kid == self.id() {
            self
        } else {
            match &self.previous {
                Some(p) if kid == p.id() => p,
                _ => return Err(VaultError::UnknownKey(kid.to_string())),
            }
        };
        let secret = key.open_raw(&binding.aad(), body).map_err(|e| match e {
            VaultError::WrongKey => VaultError::Unbound,
            other => other,
        })?;
        Ok(Opened {
            secret,
            stale: !std::ptr::eq(key, self),
            legacy: false,
        })
    }

    /// A new random key, as the text of its file.
    pub fn generate_text() -> Result<String, KeyFileError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyFileError::Random)?;
        Ok(format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    fn aead(&self) -> LessSafeKey {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.bytes.expose())
            .expect("checked at construction");
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32 bytes"))
    }

    /// Seal `plain`, bound to `context`: base64 of nonce, ciphertext and tag.
    fn seal_raw(&self, context: &[u8], plain: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut data = plain.as_bytes().to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut data,
            )
            .expect("sealing cannot fail for a value of this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Open what `seal_raw` made for the same `context`.
    fn open_raw(&self, context: &[u8], sealed: &str) -> Result<Secret, VaultError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| VaultError::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(VaultError::Malformed);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let mut data = rest.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| VaultError::Malformed)?;
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(context), &mut data)
            .map_err(|_| VaultError::WrongKey)?;
        String::from_utf8(plain.to_vec())
            .map(Secret::new)
            .map_err(|_| VaultError::WrongKey)
    }
}

/// Why a new key file was not written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("the system's random source failed")]
    Random,
    #[error("{0} exists; statusd keygen never overwrites a key (the secrets it sealed would be lost): choose another path")]
    Exists(std::path::PathBuf),
    #[error("cannot create {path}: {source}")]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Write a new key to `path` with mode 0600; an existing file is never overwritten.
pub fn write_new_key(path: &std::path::Path) -> Result<(), KeyFileError> {
    use std::io::Write;
    let text = SecretKey::generate_text()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyFileError::Exists(path.to_path_buf())
        } else {
            KeyFileError::Create {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyFileError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_text(&SecretKey::generate_text().unwrap()).unwrap()
    }

    fn account<'a>(id: &'a str, url: &'a str) -> Binding<'a> {
        Binding::AccountSecret {
            id,
            datacenter_url: url,
            client_id: "client-1",
            credentials: "api_client",
        }
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_and_bindings_only() {
        let k = key();
        let b = account("acme", "https://eu2-cloud.acronis.com");
        let sealed = k.seal_bound(&b, "s3cr3t-value");
        assert!(!sealed.contains("s3cr3t"));
        assert!(sealed.starts_with(&format!("v2.{}.", k.id())));
        let opened = k.open_bound(&b, &sealed).unwrap();
        assert_eq!(opened.secret.expose(), "s3cr3t-value");
        assert!(!opened.stale);
        // Another address, another account, another kind: altered, not opened.
        for other in [
            account("acme", "https://evil.example"),
            account("other", "https://eu2-cloud.acronis.com"),
            Binding::FusionSession {
                base_url: "https://eu2-cloud.acronis.com",
                user: "acme",
            },
        ] {
            assert_eq!(
                k.open_bound(&other, &sealed).unwrap_err(),
                VaultError::Unbound
            );
        }
        assert!(matches!(
            key().open_bound(&b, &sealed).unwrap_err(),
            VaultError::UnknownKey(_)
        ));
        assert_eq!(
            k.open_bound(&b, "v2.zz").unwrap_err(),
            VaultError::Malformed
        );
        // A fresh nonce each time: the same secret never seals the same way twice.
        assert_ne!(k.seal_bound(&b, "x"), k.seal_bound(&b, "x"));
    }

    #[test]
    fn the_previous_key_and_the_format_before_bindings_still_open_and_are_stale() {
        let old = key();
        let b = account("acme", "https://eu2-cloud.acronis.com");
        let by_old = old.seal_bound(&b, "s1");
        let legacy = old.seal_raw(b"acme", "s0");
        let new = key().with_previous(old.clone());
        let opened = new.open_bound(&b, &by_old).unwrap();
        assert_eq!((opened.secret.expose(), opened.stale), ("s1", true));
        let opened = new.open_bound(&b, &legacy).unwrap();
        assert_eq!(
            (opened.secret.expose(), opened.stale, opened.legacy),
            ("s0", true, true)
        );
        assert!(!new.open_bound(&b, &by_old).unwrap().legacy);
        assert_eq!(
            key().open_bound(&b, &legacy).unwrap_err(),
            VaultError::WrongKey
        );
        let by_new = new.seal_bound(&b, "s2");
        assert!(!new.open_bound(&b, &by_new).unwrap().stale);
        assert!(matches!(
            old.open_bound(&b, &by_new).unwrap_err(),
            VaultError::UnknownKey(_)
        ));
    }

    #[test]
    fn keys_are_read_as_base64_or_hex_of_32_bytes() {
        assert!(SecretKey::from_text(&"ab".repeat(32)).is_ok());
        assert!(SecretKey::from_text("c2hvcnQ=").unwrap_err().contains("32"));
        assert!(SecretKey::from_text("not a key!").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new_key(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let before = std::fs::read_to_string(&path).unwrap();
        assert!(write_new_key(&path)
            .unwrap_err()
            .to_string()
            .contains("never overwrites"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        assert!(SecretKey::from_text(&before).is_ok());
    }
}
