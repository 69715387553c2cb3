//! Node identity: the Raft node id derived from the node name, and the cookie's HMAC proofs.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The Raft id of the node named `name`: the first 8 bytes of its SHA-256, so that every node
/// derives the same id from the same name without coordination.
pub fn node_id(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(id)
}

/// Which side proves: the two proofs of one handshake differ, so neither can be reflected.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Dialer,
    Listener,
}

/// HMAC-SHA256 keyed by the cookie over the side, the cluster name and both nonces.
fn mac(cookie: &[u8], side: Side, cluster: &str, ours: &[u8], theirs: &[u8]) -> Option<HmacSha256> {
    // HMAC takes keys of any length: this fails for none.
    let mut mac = HmacSha256::new_from_slice(cookie).ok()?;
    mac.update(match side {
        Side::Dialer => b"switchboard-dialer\0",
        Side::Listener => b"switchboard-listener",
    });
    mac.update(cluster.as_bytes());
    mac.update(&[0]);
    mac.update(ours);
    mac.update(theirs);
    Some(mac)
}

/// The proof that `side` holds the cookie, for the nonces of one handshake.
pub fn proof(cookie: &[u8], side: Side, cluster: &str, ours: &[u8], theirs: &[u8]) -> Vec<u8> {
    mac(cookie, side, cluster, ours, theirs)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default()
}

/// Checks `got` against the proof expected, in constant time.
pub fn verify(
    cookie: &[u8],
    side: Side,
    cluster: &str,
    ours: &[u8],
    theirs: &[u8],
    got: &[u8],
) -> bool {
    mac(cookie, side, cluster, ours, theirs).is_some_and(|m| m.verify_slice(got).is_ok())
}

/// A fresh random nonce for one handshake.
pub fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; 32];
    rand::fill(&mut n[..]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(node_id("a@h"), node_id("a@h"));
        assert_ne!(node_id("a@h"), node_id("b@h"));
    }

    #[test]
    fn a_proof_verifies_only_with_the_same_cookie_and_side() {
        let (a, b) = (nonce(), nonce());
        let p = proof(b"cookie", Side::Dialer, "c", &a, &b);
        assert!(verify(b"cookie", Side::Dialer, "c", &a, &b, &p));
        assert!(!verify(b"other", Side::Dialer, "c", &a, &b, &p));
        assert!(!verify(b"cookie", Side::Listener, "c", &a, &b, &p));
        assert!(!verify(b"cookie", Side::Dialer, "d", &a, &b, &p));
        assert!(!verify(b"cookie", Side::Dialer, "c", &b, &a, &p));
    }
}
