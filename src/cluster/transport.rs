//! Inter-node transport: TCP (with mutual TLS when `[cluster]` names certificates, see
//! [`super::tls`]), frames of a 4-byte big-endian length and a body, bounded in size, every
//! connect and read under a timeout. A connection starts with a challenge-response in both
//! directions over the shared cookie (HMAC-SHA256, see [`super::identity`]); a peer that
//! fails it is refused and logged, and never gets a request through.
//!
//! The handshake is JSON. Requests and responses after it are MessagePack (serde's data model
//! as JSON has it, struct fields by name, bytes as bytes) when both sides say in the
//! handshake that they read it, else JSON, so a node of an older release, which says nothing,
//! is still understood. JSON carried every message body in base64, and making and parsing it
//! was about a quarter of a quorum queue's CPU at 1 KiB.

use super::identity::{nonce, proof, verify, Side};
use super::tls::NodeTls;
use super::{BoxFuture, Command, CommandResult, NodeInfo, TypeConfig};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

/// Largest frame either side accepts. Snapshot chunks are far smaller (openraft sends 3 MiB).
pub const MAX_FRAME: usize = 16 << 20;

/// A server connection with no request for this long is closed; the dialer reconnects.
const IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("undecodable frame: {0}")]
    DecodePacked(#[from] rmp_serde::decode::Error),
    #[error("unencodable frame: {0}")]
    EncodePacked(#[from] rmp_serde::encode::Error),
    #[error("refused: {0}")]
    Refused(String),
    #[error("peer broke the protocol: {0}")]
    Protocol(&'static str),
    #[error("waiting {0:?} before reconnecting")]
    Backoff(Duration),
}

/// What a node proves itself with.
#[derive(Debug, Clone)]
pub struct Auth {
    pub cluster: String,
    pub node: String,
    pub cookie: Vec<u8>,
    /// Inter-node TLS, when configured: every connection, dialed or accepted, runs in it.
    pub tls: Option<NodeTls>,
}

/// One inter-node connection: plain TCP, or TLS over it.
pub trait Link: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> Link for T {}

/// An inter-node connection, whichever it is.
pub type Conn = Box<dyn Link>;

/// How a connection's requests and responses are encoded (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    MessagePack,
}

impl Format {
    /// What both sides read, from whether the peer said it reads MessagePack.
    fn agreed(peer_packs: bool) -> Self {
        if peer_packs {
            Format::MessagePack
        } else {
            Format::Json
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Handshake {
    Hello {
        cluster: String,
        node: String,
        nonce: Vec<u8>,
        /// The dialer reads MessagePack (absent from older releases).
        #[serde(default)]
        packs: bool,
    },
    Challenge {
        node: String,
        nonce: Vec<u8>,
        proof: Vec<u8>,
        /// The listener reads MessagePack and will use it, the dialer having said it does.
        #[serde(default)]
        packs: bool,
    },
    Proof {
        proof: Vec<u8>,
    },
    Welcome,
    Refused {
        reason: String,
    },
}

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// Take this node in (sent to a seed; forwarded to the leader).
    Join(NodeInfo),
    /// Remove the named node (on the leader).
    Forget(String),
    /// Commit this command (on the leader).
    Propose(Command),
    /// The log index a read must wait for to see everything committed before it was asked
    /// (on the leader, which confirms with a majority that it still leads; nothing is
    /// written): Raft's read index.
    ReadIndex,
    /// A [`Request::Join`], [`Request::Forget`], [`Request::Propose`] or [`Request::ReadIndex`] passed on by a node
    /// that is not the leader: run here, or refused, never passed on again.
    Forwarded(Box<Request>),
    Ping,
    /// A request of a node reaching a queue held here (see [`super::forward`]).
    Forward(super::forward::wire::Call),
    /// A Raft RPC or proposal for a quorum queue's own group (see [`super::quorum`]).
    Group {
        group: String,
        request: Box<Request>,
    },
    /// For a quorum queue's group: this member does not stand for election for this many
    /// milliseconds (0: it may again), while the lead is moved to another member.
    HoldElections(u64),
    /// For a quorum queue's group: this member takes the lead (`ctl rebalance`).
    TakeLead,
}

/// A leader operation done: what the command did, and the log index it was committed at.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpOk {
    pub result: CommandResult,
    pub index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    /// Try again on the leader (once one is known).
    #[error("not the leader")]
    NotLeader,
    #[error("unknown cluster node '{0}'")]
    UnknownNode(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    Op(Result<OpOk, OpError>),
    Pong,
    Forward(super::forward::wire::Reply),
}

async fn write_frame<T: Serialize>(
    s: &mut (impl AsyncWrite + Unpin + ?Sized),
    format: Format,
    msg: &T,
) -> Result<(), TransportError> {
    let body = match format {
        Format::Json => serde_json::to_vec(msg)?,
        Format::MessagePack => rmp_serde::to_vec_named(msg)?,
    };
    if body.len() > MAX_FRAME {
        return Err(TransportError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    s.write_all(&frame).await?;
    // TLS holds records until flushed; plain TCP has nothing to flush.
    s.flush().await?;
    Ok(())
}

async fn read_frame<T: DeserializeOwned>(
    s: &mut (impl AsyncRead + Unpin + ?Sized),
    format: Format,
    limit: Duration,
) -> Result<T, TransportError> {
    let read = async {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(TransportError::TooLarge(len));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await?;
        Ok(match format {
            Format::Json => serde_json::from_slice(&body)?,
            Format::MessagePack => rmp_serde::from_slice(&body)?,
        })
    };
    timeout(limit, read)
        .await
        .map_err(|_| TransportError::Timeout(limit))?
}

/// Connects to `addr` and proves both ways that the two hold the same cookie; with `expect`,
/// the node there must be the one of that name (an address may have changed hands).
pub async fn dial(
    addr: &str,
    auth: &Auth,
    expect: Option<&str>,
    limit: Duration,
) -> Result<(Conn, Format), TransportError> {
    let tcp = timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout(limit))??;
    tcp.set_nodelay(true)?;
    let mut s: Conn = match &auth.tls {
        None => Box::new(tcp),
        Some(tls) => Box::new(
            timeout(limit, tls.connect(addr, tcp))
                .await
                .map_err(|_| TransportError::Timeout(limit))?
                .map_err(|e| {
                    tracing::warn!(peer = %addr, error = %e, "cluster peer: TLS handshake failed");
                    TransportError::Refused(format!("TLS with {addr}: {e}"))
                })?,
        ),
    };
    let ours = nonce();
    write_frame(
        &mut s,
        Format::Json,
        &Handshake::Hello {
            cluster: auth.cluster.clone(),
            node: auth.node.clone(),
            nonce: ours.clone(),
            packs: true,
        },
    )
    .await?;
    let (peer, theirs, format) = match read_frame(&mut s, Format::Json, limit).await? {
        Handshake::Challenge {
            node,
            nonce,
            proof,
            packs,
        } => {
            if !verify(
                &auth.cookie,
                Side::Listener,
                &auth.cluster,
                &nonce,
                &ours,
                &proof,
            ) {
                tracing::warn!(peer = %addr, node = %node, "cluster peer refused: it does not hold this cluster's cookie");
                return Err(TransportError::Refused(format!(
                    "{node} at {addr} does not hold this cluster's cookie"
                )));
            }
            if expect.is_some_and(|e| e != node) {
                return Err(TransportError::Refused(format!(
                    "{addr} is node {node}, not {}",
                    expect.unwrap_or_default()
                )));
            }
            (node, nonce, Format::agreed(packs))
        }
        Handshake::Refused { reason } => {
            tracing::warn!(peer = %addr, %reason, "cluster peer refused this node");
            return Err(TransportError::Refused(reason));
        }
        _ => return Err(TransportError::Protocol("expected a challenge")),
    };
    let p = proof(&auth.cookie, Side::Dialer, &auth.cluster, &ours, &theirs);
    write_frame(&mut s, Format::Json, &Handshake::Proof { proof: p }).await?;
    match read_frame(&mut s, Format::Json, limit).await? {
        Handshake::Welcome => Ok((s, format)),
        Handshake::Refused { reason } => {
            tracing::warn!(peer = %addr, node = %peer, %reason, "cluster peer refused this node");
            Err(TransportError::Refused(reason))
        }
        _ => Err(TransportError::Protocol("expected welcome")),
    }
}

/// The listener's side of [`dial`]; the dialer's name and the connection's format once it
/// has proved it holds the cookie.
async fn accept_handshake(
    s: &mut Conn,
    from: SocketAddr,
    auth: &Auth,
    limit: Duration,
) -> Result<(String, Format), TransportError> {
    let Handshake::Hello {
        cluster,
        node,
        nonce: theirs,
        packs,
    } = read_frame(s, Format::Json, limit).await?
    else {
        return Err(TransportError::Protocol("expected hello"));
    };
    if cluster != auth.cluster {
        let reason = format!("this is cluster '{}', not '{cluster}'", auth.cluster);
        tracing::warn!(peer = %from, node = %node, "cluster peer refused: {reason}");
        write_frame(
            s,
            Format::Json,
            &Handshake::Refused {
                reason: reason.clone(),
            },
        )
        .await?;
        return Err(TransportError::Refused(reason));
    }
    let ours = nonce();
    let p = proof(&auth.cookie, Side::Listener, &auth.cluster, &ours, &theirs);
    write_frame(
        s,
        Format::Json,
        &Handshake::Challenge {
            node: auth.node.clone(),
            nonce: ours.clone(),
            proof: p,
            packs,
        },
    )
    .await?;
    let Handshake::Proof { proof: got } = read_frame(s, Format::Json, limit).await? else {
        return Err(TransportError::Protocol("expected a proof"));
    };
    if !verify(
        &auth.cookie,
        Side::Dialer,
        &auth.cluster,
        &theirs,
        &ours,
        &got,
    ) {
        tracing::warn!(peer = %from, node = %node, "cluster peer refused: wrong cookie");
        let reason = "wrong cookie".to_owned();
        write_frame(
            s,
            Format::Json,
            &Handshake::Refused {
                reason: reason.clone(),
            },
        )
        .await?;
        return Err(TransportError::Refused(reason));
    }
    write_frame(s, Format::Json, &Handshake::Welcome).await?;
    Ok((node, Format::agreed(packs)))
}

/// Answers the requests of authenticated peers.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> BoxFuture<'_, Response>;
}

/// Accepts peers on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    auth: Arc<Auth>,
    handler: Arc<dyn Handler>,
    limit: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = super::stopped(&mut shutdown) => return,
        };
        let (auth, handler, mut shutdown) = (auth.clone(), handler.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let mut s: Conn = match &auth.tls {
                None => Box::new(tcp),
                Some(tls) => match timeout(limit, tls.accept(tcp)).await {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %from, error = %e, "cluster peer refused: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(peer = %from, "cluster peer: TLS handshake timed out");
                        return;
                    }
                },
            };
            let (node, format) = match accept_handshake(&mut s, from, &auth, limit).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(peer = %from, error = %e, "cluster handshake failed");
                    return;
                }
            };
            loop {
                let request: Request = tokio::select! {
                    r = read_frame(&mut s, format, IDLE) => match r {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(peer = %from, %node, error = %e, "cluster connection closed");
                            return;
                        }
                    },
                    _ = super::stopped(&mut shutdown) => return,
                };
                let response = handler.handle(request).await;
                if let Err(e) = write_frame(&mut s, format, &response).await {
                    tracing::debug!(peer = %from, %node, error = %e, "cluster connection closed");
                    return;
                }
            }
        });
    }
}

/// A dialer to one peer: keeps its connection, reconnects after failures with a doubling
/// delay (50 ms up to 2 s) during which calls fail at once.
pub struct Peer {
    addr: String,
    /// The name of the node expected at `addr`, when known.
    name: Option<String>,
    auth: Arc<Auth>,
    connect_timeout: Duration,
    state: tokio::sync::Mutex<PeerState>,
}

#[derive(Default)]
struct PeerState {
    conn: Option<(Conn, Format)>,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Peer {
    pub fn new(
        addr: String,
        name: Option<String>,
        auth: Arc<Auth>,
        connect_timeout: Duration,
    ) -> Self {
        Peer {
            addr,
            name,
            auth,
            connect_timeout,
            state: tokio::sync::Mutex::new(PeerState::default()),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `request` and reads its response within `limit`.
    pub async fn call(
        &self,
        request: &Request,
        limit: Duration,
    ) -> Result<Response, TransportError> {
        let mut st = self.state.lock().await;
        let reused = st.conn.is_some();
        let result = self.call_locked(&mut st, request, limit).await;
        match result {
            // A kept connection the peer has since closed: one fresh try.
            Err(TransportError::Io(_)) if reused => self.call_locked(&mut st, request, limit).await,
            other => other,
        }
    }

    async fn call_locked(
        &self,
        st: &mut PeerState,
        request: &Request,
        limit: Duration,
    ) -> Result<Response, TransportError> {
        let (mut conn, format) = match st.conn.take() {
            Some(c) => c,
            None => {
                if let Some(at) = st.retry_at {
                    let now = Instant::now();
                    if at > now {
                        return Err(TransportError::Backoff(at - now));
                    }
                }
                match dial(
                    &self.addr,
                    &self.auth,
                    self.name.as_deref(),
                    self.connect_timeout.min(limit),
                )
                .await
                {
                    Ok(c) => {
                        st.failures = 0;
                        st.retry_at = None;
                        c
                    }
                    Err(e) => {
                        st.failures = st.failures.saturating_add(1);
                        let delay = Duration::from_millis(50)
                            .saturating_mul(1 << st.failures.min(6))
                            .min(Duration::from_secs(2));
                        st.retry_at = Some(Instant::now() + delay);
                        return Err(e);
                    }
                }
            }
        };
        let exchange = async {
            write_frame(&mut conn, format, request).await?;
            read_frame::<Response>(&mut conn, format, limit).await
        };
        let response = timeout(limit, exchange)
            .await
            .map_err(|_| TransportError::Timeout(limit))??;
        st.conn = Some((conn, format));
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::quorum::codec::{Encoded, Ops};
    use bytes::Bytes;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    /// What an older release sends and reads: no `packs`.
    #[test]
    fn a_handshake_without_packs_is_one_with_an_older_release_and_stays_json() {
        let old_hello = r#"{"Hello":{"cluster":"c","node":"n@h","nonce":[1,2]}}"#;
        match serde_json::from_str::<Handshake>(old_hello).unwrap() {
            Handshake::Hello { packs, .. } => assert_eq!(Format::agreed(packs), Format::Json),
            other => panic!("{other:?}"),
        }
        let challenge = serde_json::to_value(Handshake::Challenge {
            node: "n@h".into(),
            nonce: vec![3],
            proof: vec![4],
            packs: true,
        })
        .unwrap();
        assert_eq!(challenge["Challenge"]["packs"], true);
    }

    #[tokio::test]
    async fn requests_and_responses_read_back_in_both_formats() {
        let entry = |index, payload| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(4, 2), index),
            payload,
        };
        let request = Request::Group {
            group: "q1".into(),
            request: Box::new(Request::AppendEntries(AppendEntriesRequest {
                vote: Vote::new_committed(4, 2),
                prev_log_id: None,
                leader_commit: Some(LogId::new(CommittedLeaderId::new(4, 2), 1)),
                entries: vec![
                    entry(
                        1,
                        EntryPayload::Normal(Command::Queue(Ops {
                            enqueue: vec![Encoded(Bytes::from_static(&[0, 159, 255, 10]))],
                            settle: vec![7],
                            returned: vec![],
                            at: 12,
                        })),
                    ),
                    entry(
                        2,
                        EntryPayload::Normal(Command::Guarded {
                            key: "mqtt-will/[\"/\",\"c\"]".into(),
                            expected: Some(
                                serde_json::json!({"conn": 3, "nested": {"a": [1, null]}}),
                            ),
                            then: vec![Command::Delete { key: "k".into() }],
                        }),
                    ),
                ],
            })),
        };
        let response = Response::Op(Ok(OpOk {
            result: CommandResult {
                existed: true,
                guard_held: true,
                refused: vec![2],
            },
            index: 9,
        }));
        for format in [Format::Json, Format::MessagePack] {
            assert_eq!(round_trip(format, &request).await, format!("{request:?}"));
            assert_eq!(round_trip(format, &response).await, format!("{response:?}"));
        }
    }

    /// `msg` written as a frame and read back, as its debug form.
    async fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(
        format: Format,
        msg: &T,
    ) -> String {
        let mut wire = Vec::new();
        write_frame(&mut wire, format, msg).await.unwrap();
        let back: T = read_frame(&mut &wire[..], format, Duration::from_secs(1))
            .await
            .unwrap();
        format!("{back:?}")
    }
}
