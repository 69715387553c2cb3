//! Salted password hashes in RabbitMQ's format, so users exported from RabbitMQ log in here
//! with the same password and ours import there: base64 of a 4-byte random salt followed by
//! `SHA-256(salt ++ password)` (`rabbit_password_hashing_sha256`, the default) or
//! `SHA-512(salt ++ password)` (`rabbit_password_hashing_sha512`).

use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

const SALT_LEN: usize = 4;

/// RabbitMQ's names for the hashing algorithms, as its definitions JSON carries them.
pub const SHA256_NAME: &str = "rabbit_password_hashing_sha256";
pub const SHA512_NAME: &str = "rabbit_password_hashing_sha512";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            SHA256_NAME => Some(Algorithm::Sha256),
            SHA512_NAME => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => SHA256_NAME,
            Algorithm::Sha512 => SHA512_NAME,
        }
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::Sha256 => Sha256::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
            Algorithm::Sha512 => Sha512::new()
                .chain_update(salt)
                .chain_update(password)
                .finalize()
                .to_vec(),
        }
    }

    fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("unknown hashing algorithm '{0}'")]
    UnknownAlgorithm(String),
    #[error("password_hash is not base64 of a 4-byte salt and a {0}-byte digest")]
    Malformed(usize),
}

/// A stored password: the salt and digest, never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    algorithm: Algorithm,
    /// Salt followed by the digest, as RabbitMQ lays them out.
    salted: Vec<u8>,
}

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHash")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt (SHA-256, RabbitMQ's default).
    pub fn new(password: &str) -> Self {
        Self::with_salt(
            Algorithm::Sha256,
            rand::random::<[u8; SALT_LEN]>(),
            password,
        )
    }

    fn with_salt(algorithm: Algorithm, salt: [u8; SALT_LEN], password: &str) -> Self {
        let mut salted = salt.to_vec();
        salted.extend(algorithm.digest(&salt, password.as_bytes()));
        PasswordHash { algorithm, salted }
    }

    /// Reads RabbitMQ's `password_hash` (base64) and `hashing_algorithm`.
    pub fn from_rabbit(password_hash: &str, algorithm: &str) -> Result<Self, HashError> {
        let algorithm = Algorithm::from_name(algorithm)
            .ok_or_else(|| HashError::UnknownAlgorithm(algorithm.to_owned()))?;
        let salted = base64::engine::general_purpose::STANDARD
            .decode(password_hash)
            .map_err(|_| HashError::Malformed(algorithm.digest_len()))?;
        if salted.len() != SALT_LEN + algorithm.digest_len() {
            return Err(HashError::Malformed(algorithm.digest_len()));
        }
        Ok(PasswordHash { algorithm, salted })
    }

    /// `password_hash` as RabbitMQ writes it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.salted)
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `password` hashes to this, compared without an early exit so the time taken
    /// does not reveal how much of the digest matched.
    pub fn verify(&self, password: &str) -> bool {
        let (salt, expected) = self.salted.split_at(SALT_LEN);
        let got = self.algorithm.digest(salt, password.as_bytes());
        constant_time_eq(expected, &got)
    }
}

/// Equal-length digests compared in constant time.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example in RabbitMQ's docs (passwords.md, "Computing Password Hash"): salt 908DC60A,
    // password "test12". Recomputed independently with Python:
    //   salt = bytes.fromhex("908dc60a")
    //   base64.b64encode(salt + hashlib.sha256(salt + b"test12").digest())
    const RABBIT_SHA256_TEST12: &str = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";
    //   base64.b64encode(salt + hashlib.sha512(salt + b"test12").digest())
    const RABBIT_SHA512_TEST12: &str =
        "kI3GChuNuIYf8lRbCCxZjgjKwsY19ns6+uFO0zcXRBGA/XGJPYD8OWMy7EB8TaOmAzjP2azv84GbINYwX2cDWb4DHnc=";

    #[test]
    fn matches_rabbitmqs_sha256_example() {
        let salt = [0x90, 0x8d, 0xc6, 0x0a];
        let h = PasswordHash::with_salt(Algorithm::Sha256, salt, "test12");
        assert_eq!(h.to_base64(), RABBIT_SHA256_TEST12);
        let imported = PasswordHash::from_rabbit(RABBIT_SHA256_TEST12, SHA256_NAME).unwrap();
        assert!(imported.verify("test12"));
        assert!(!imported.verify("test13"));
        assert!(!imported.verify(""));
    }

    #[test]
    fn accepts_rabbitmqs_sha512_variant() {
        let imported = PasswordHash::from_rabbit(RABBIT_SHA512_TEST12, SHA512_NAME).unwrap();
        assert_eq!(imported.algorithm(), Algorithm::Sha512);
        assert!(imported.verify("test12"));
        assert!(!imported.verify("test12 "));
        assert_eq!(imported.to_base64(), RABBIT_SHA512_TEST12);
    }

    #[test]
    fn rejects_malformed_hashes() {
        assert!(matches!(
            PasswordHash::from_rabbit(RABBIT_SHA256_TEST12, "rabbit_password_hashing_md5"),
            Err(HashError::UnknownAlgorithm(_))
        ));
        assert!(PasswordHash::from_rabbit(RABBIT_SHA256_TEST12, SHA512_NAME).is_err());
        assert!(PasswordHash::from_rabbit("not base64!", SHA256_NAME).is_err());
    }

    #[test]
    fn fresh_hashes_are_salted() {
        let a = PasswordHash::new("secret");
        let b = PasswordHash::new("secret");
        assert!(a.verify("secret") && b.verify("secret"));
        // Two hashes of one password differ unless the 4-byte salts collide (2^-32).
        assert_ne!(a.to_base64(), b.to_base64());
        assert!(!format!("{a:?}").contains(&a.to_base64()));
    }
}
