//! CONNECT / STOMP: version negotiation, authentication, vhost choice and heart-beats.

use super::error::{StompError, StompResult};
use crate::core::access::{tag, User};
use crate::core::vhost::generate_name;
use crate::core::{Broker, VHost};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use switchboard_stomp::{Command, Frame, Version};

/// What CONNECT agreed.
#[derive(Debug)]
pub struct Negotiated {
    pub version: Version,
    pub vhost: Arc<VHost>,
    pub user: String,
    /// May send with another user's `user-id` (the `impersonator` tag).
    pub impersonator: bool,
    pub session: String,
    /// How often we send a heart-beat (None = never).
    pub send_every: Option<Duration>,
    /// How often the client promised to send something (None = no promise).
    pub expect_every: Option<Duration>,
}

/// The versions this server speaks, as the ERROR for a failed negotiation lists them.
pub const SUPPORTED: &str = "1.0,1.1,1.2";

/// The highest version both sides speak. No `accept-version` means 1.0 (STOMP 1.1 §CONNECT).
fn negotiate_version(frame: &Frame) -> StompResult<Version> {
    let Some(accept) = frame.header("accept-version") else {
        return Ok(Version::V1_0);
    };
    accept
        .split(',')
        .filter_map(Version::parse)
        .max()
        .ok_or_else(|| {
            StompError::new(
                "Version mismatch",
                format!(
                    "Supported protocol versions are {SUPPORTED}; the client accepts '{accept}'."
                ),
            )
            .with_header("version", SUPPORTED)
        })
}

/// `heart-beat: cx,cy` → (cx, cy) in milliseconds.
fn parse_heart_beat(value: &str) -> StompResult<(u64, u64)> {
    let bad = || StompError::invalid_header("heart-beat", value, "expected two integers 'cx,cy'");
    let (a, b) = value.split_once(',').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

/// Heart-beat intervals above this (one day) are treated as none: timers that far out are
/// pointless, and a peer's `u64::MAX` must not overflow a deadline.
const MAX_HEARTBEAT_MS: u64 = 24 * 60 * 60 * 1000;

/// One direction of heart-beating: both sides must want it; the slower of the two wins.
fn interval(ours: u64, theirs: u64) -> Option<Duration> {
    let ms = ours.max(theirs);
    (ours > 0 && theirs > 0 && ms <= MAX_HEARTBEAT_MS).then(|| Duration::from_millis(ms))
}

/// How often we send heart-beats: at the interval the client asked to receive them (`cy`), as
/// RabbitMQ does, but never more often than `floor`; none when either side turned them off.
/// Advertising this same value as our `sx` makes the client's `max(sx, cy)` agree with it.
fn send_interval(ours: u64, floor: u64, cy: u64) -> Option<Duration> {
    let ms = cy.max(floor);
    (ours > 0 && cy > 0 && ms <= MAX_HEARTBEAT_MS).then(|| Duration::from_millis(ms))
}

/// The `message` of the ERROR refusing a CONNECT's credentials.
pub const ACCESS_REFUSED: &str = "Access refused";

/// Handles the first frame of a connection; returns what was agreed and the CONNECTED frame.
pub fn connect(
    frame: &Frame,
    broker: &Broker,
    peer: SocketAddr,
    cert_name: Option<&str>,
) -> StompResult<(Negotiated, Frame)> {
    if !matches!(frame.command, Command::Connect | Command::Stomp) {
        return Err(StompError::new(
            "Expected CONNECT",
            format!(
                "The first frame must be CONNECT or STOMP, not {}.",
                frame.command
            ),
        ));
    }
    let version = negotiate_version(frame)?;
    let config = &broker.config.stomp;
    let user = authenticate(frame, broker, peer, cert_name)?;
    let vhost = frame
        .header("host")
        .and_then(|h| broker.vhost(h))
        .or_else(|| broker.vhost(&config.default_vhost))
        .ok_or_else(|| {
            StompError::new(
                "Virtual host not found",
                format!(
                    "The default vhost '{}' does not exist.",
                    config.default_vhost
                ),
            )
        })?;
    broker
        .access
        .check_vhost(&vhost.name, &user.name)
        .map_err(|r| StompError::new("Access refused", r.0))?;
    let ours = u64::from(config.heartbeat_ms);
    let (cx, cy) = match frame.header("heart-beat") {
        Some(h) if version != Version::V1_0 => parse_heart_beat(h)?,
        _ => (0, 0),
    };
    let send_every = send_interval(ours, u64::from(config.heartbeat_min_ms), cy);
    // `sx`: what we will send at when the client wants beats, else our offer.
    let sx = send_every.map_or(ours, |d| d.as_millis() as u64);
    let negotiated = Negotiated {
        version,
        vhost,
        impersonator: user.has_tag(tag::IMPERSONATOR),
        user: user.name,
        session: generate_name("session-"),
        send_every,
        expect_every: interval(ours, cx),
    };
    let connected = Frame::new(Command::Connected)
        .with("version", version.as_str())
        .with("server", concat!("Switchboard/", env!("CARGO_PKG_VERSION")))
        .with("session", negotiated.session.clone())
        .with("heart-beat", format!("{sx},{ours}"));
    Ok((negotiated, connected))
}

/// `login`/`passcode` against the users; without `login`, the TLS client certificate's common
/// name (`cert_name`) with `stomp.ssl_cert_login`, else the configured default login (from
/// loopback only, unless configured otherwise).
fn authenticate(
    frame: &Frame,
    broker: &Broker,
    peer: SocketAddr,
    cert_name: Option<&str>,
) -> StompResult<User> {
    let config = &broker.config.stomp;
    let (login, passcode) = match (frame.header("login"), cert_name) {
        (Some(login), _) => (login, Some(frame.header("passcode").unwrap_or(""))),
        // Verified against the CA: the certificate stands for the passcode (RabbitMQ's
        // ssl_cert_login).
        (None, Some(cn)) if config.ssl_cert_login => (cn, None),
        // The default login acts as that user with exactly its permissions; its passcode is
        // checked when one is configured.
        (None, _) => match (&config.default_login, &config.default_passcode) {
            (Some(login), passcode)
                if !config.default_login_loopback_only
                    || crate::core::access::is_loopback(peer.ip()) =>
            {
                (login.as_str(), passcode.as_deref())
            }
            _ => {
                return Err(StompError::new(
                    ACCESS_REFUSED,
                    "No login was given and no default login applies to this connection.",
                ))
            }
        },
    };
    let user = match passcode {
        Some(p) => broker.access.authenticate(login, p, peer.ip()),
        None => broker.access.trusted(login, peer.ip()),
    };
    user.map_err(|e| StompError::new(ACCESS_REFUSED, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(accept: Option<&str>) -> Frame {
        let f = Frame::new(Command::Connect);
        match accept {
            Some(a) => f.with("accept-version", a),
            None => f,
        }
    }

    #[test]
    fn versions() {
        assert_eq!(negotiate_version(&f(None)).unwrap(), Version::V1_0);
        assert_eq!(
            negotiate_version(&f(Some("1.0,1.1"))).unwrap(),
            Version::V1_1
        );
        assert_eq!(
            negotiate_version(&f(Some("1.2,1.0"))).unwrap(),
            Version::V1_2
        );
        assert_eq!(
            negotiate_version(&f(Some("1.1, 1.3"))).unwrap(),
            Version::V1_1
        );
        let e = negotiate_version(&f(Some("2.0"))).unwrap_err();
        assert!(e.detail.contains(SUPPORTED));
    }

    #[test]
    fn heart_beats() {
        assert_eq!(parse_heart_beat("0, 500").unwrap(), (0, 500));
        assert!(parse_heart_beat("x").is_err());
        assert_eq!(interval(1000, 0), None);
        assert_eq!(interval(1000, 5000), Some(Duration::from_millis(5000)));
        assert_eq!(interval(1000, 10), Some(Duration::from_millis(1000)));
        assert_eq!(interval(1000, u64::MAX), None, "absurd intervals mean none");
    }

    #[test]
    fn we_send_at_the_clients_interval_above_the_floor() {
        let ms = |v| Some(Duration::from_millis(v));
        assert_eq!(send_interval(10_000, 100, 500), ms(500));
        assert_eq!(send_interval(10_000, 100, 30_000), ms(30_000));
        assert_eq!(
            send_interval(10_000, 100, 20),
            ms(100),
            "never below the floor"
        );
        assert_eq!(send_interval(10_000, 100, 0), None, "the client wants none");
        assert_eq!(send_interval(0, 100, 500), None, "heart-beats turned off");
        assert_eq!(send_interval(10_000, 100, u64::MAX), None);
    }
}
