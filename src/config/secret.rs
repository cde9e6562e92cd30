//! A secret value whose `Debug`, `Display` and `Serialize` never show it.

use base64::Engine;

use super::*;

/// A secret value (client secret, API token). `Debug`, `Display` and `Serialize` never show it.
#[derive(Clone)]
pub struct Secret(secrecy::SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(secrecy::SecretString::from(value.into()))
    }
    /// The only way to read the value; grep for it to audit every use.
    pub fn expose(&self) -> &str {
        use secrecy::ExposeSecret;
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Bytes of a key.
pub const KEY_LEN: usize = 32;

/// The key that seals and opens secrets in the store (and the previous key, during a
/// rotation, which only opens). Its `Debug` never shows it.
#[derive(Clone)]
pub struct SecretKey {
    pub(crate) bytes: Secret,
    pub(crate) previous: Option<Box<SecretKey>>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
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
            previous: None,
        })
    }

    /// This key, with `previous` to open what it sealed (a rotation under way).
    pub fn with_previous(mut self, previous: SecretKey) -> SecretKey {
        self.previous = Some(Box::new(SecretKey {
            previous: None,
            ..previous
        }));
        self
    }
}
