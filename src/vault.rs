//! Secrets kept in the store (the client secrets of accounts added at run time), sealed with
//! AES-256-GCM under the key of `store.secret_key_file`. Each value gets a fresh random nonce,
//! and what it belongs to (e.g. the account id) is bound to it as associated data, so a sealed
//! value copied onto another record does not open.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::config::Secret;

/// Bytes of a key.
pub const KEY_LEN: usize = 32;

/// The key that seals and opens secrets in the store. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey {
    bytes: Secret,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("the sealed value is not base64 or too short")]
    Malformed,
    #[error("the key cannot open it (another key sealed it, or it was altered)")]
    WrongKey,
}

impl SecretKey {
    /// A key from the text of its file: 32 bytes as base64 (what `statusd keygen` writes) or as
    /// 64 hex digits; surrounding white space is ignored.
    pub fn from_text(text: &str) -> Result<SecretKey, String> {
        let t = text.trim();
        let bytes = if t.len() == 2 * KEY_LEN && t.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..KEY_LEN)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).expect("hex digits"))
                .collect::<Vec<u8>>()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(|_| {
                    "expected 32 bytes as base64 (as `statusd keygen FILE` writes) or 64 hex digits"
                        .to_string()
                })?
        };
        if bytes.len() != KEY_LEN {
            return Err(format!(
                "the key is {} bytes; it must be {KEY_LEN} (write a new one with `statusd keygen FILE`)",
                bytes.len()
            ));
        }
        Ok(SecretKey {
            bytes: Secret::new(base64::engine::general_purpose::STANDARD.encode(&bytes)),
        })
    }

    /// A new random key, as the text of its file.
    pub fn generate_text() -> Result<String, String> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "the system's random source failed".to_string())?;
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
    pub fn seal(&self, context: &str, plain: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut data = plain.as_bytes().to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("sealing cannot fail for a value of this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Open what `seal` made for the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Secret, VaultError> {
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
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| VaultError::WrongKey)?;
        String::from_utf8(plain.to_vec())
            .map(Secret::new)
            .map_err(|_| VaultError::WrongKey)
    }
}

/// Write a new key to `path` with mode 0600; an existing file is never overwritten.
pub fn write_new_key(path: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    let text = SecretKey::generate_text()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists; statusd keygen never overwrites a key (the secrets it sealed would be lost): choose another path",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_text(&SecretKey::generate_text().unwrap()).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_and_context_only() {
        let k = key();
        let sealed = k.seal("acme", "s3cr3t-value");
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(k.open("acme", &sealed).unwrap().expose(), "s3cr3t-value");
        assert_eq!(k.open("other", &sealed).unwrap_err(), VaultError::WrongKey);
        assert_eq!(
            key().open("acme", &sealed).unwrap_err(),
            VaultError::WrongKey
        );
        assert_eq!(k.open("acme", "!!").unwrap_err(), VaultError::Malformed);
        // A fresh nonce each time: the same secret never seals the same way twice.
        assert_ne!(k.seal("acme", "x"), k.seal("acme", "x"));
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
            .contains("never overwrites"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        assert!(SecretKey::from_text(&before).is_ok());
    }
}
