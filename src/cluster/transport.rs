//! Inter-node transport: TCP (with mutual TLS when `[cluster]` names certificates, see
//! [`super::tls`]), frames of a 4-byte big-endian length and a JSON body, bounded in size,
//! every connect and read under a timeout. A connection starts with a challenge-response in
//! both directions over the shared cookie (HMAC-SHA256, see [`super::identity`]); a peer that
//! fails it is refused and logged, and never gets a request through.

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

#[derive(Debug, Serialize, Deserialize)]
enum Handshake {
    Hello {
        cluster: String,
        node: String,
        nonce: Vec<u8>,
    },
    Challenge {
        node: String,
        nonce: Vec<u8>,
        proof: Vec<u8>,
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
    msg: &T,
) -> Result<(), TransportError> {
    let body = serde_json::to_vec(msg)?;
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
        Ok(serde_json::from_slice(&body)?)
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
) -> Result<Conn, TransportError> {
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
        &Handshake::Hello {
            cluster: auth.cluster.clone(),
            node: auth.node.clone(),
            nonce: ours.clone(),
        },
    )
    .await?;
    let (peer, theirs) = match read_frame(&mut s, limit).await? {
        Handshake::Challenge { node, nonce, proof } => {
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
            (node, nonce)
        }
        Handshake::Refused { reason } => {
            tracing::warn!(peer = %addr, %reason, "cluster peer refused this node");
            return Err(TransportError::Refused(reason));
        }
        _ => return Err(TransportError::Protocol("expected a challenge")),
    };
    let p = proof(&auth.cookie, Side::Dialer, &auth.cluster, &ours, &theirs);
    write_frame(&mut s, &Handshake::Proof { proof: p }).await?;
    match read_frame(&mut s, limit).await? {
        Handshake::Welcome => Ok(s),
        Handshake::Refused { reason } => {
            tracing::warn!(peer = %addr, node = %peer, %reason, "cluster peer refused this node");
            Err(TransportError::Refused(reason))
        }
        _ => Err(TransportError::Protocol("expected welcome")),
    }
}

/// The listener's side of [`dial`]; `Ok` once the dialer has proved it holds the cookie.
async fn accept_handshake(
    s: &mut Conn,
    from: SocketAddr,
    auth: &Auth,
    limit: Duration,
) -> Result<String, TransportError> {
    let Handshake::Hello {
        cluster,
        node,
        nonce: theirs,
    } = read_frame(s, limit).await?
    else {
        return Err(TransportError::Protocol("expected hello"));
    };
    if cluster != auth.cluster {
        let reason = format!("this is cluster '{}', not '{cluster}'", auth.cluster);
        tracing::warn!(peer = %from, node = %node, "cluster peer refused: {reason}");
        write_frame(
            s,
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
        &Handshake::Challenge {
            node: auth.node.clone(),
            nonce: ours.clone(),
            proof: p,
        },
    )
    .await?;
    let Handshake::Proof { proof: got } = read_frame(s, limit).await? else {
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
            &Handshake::Refused {
                reason: reason.clone(),
            },
        )
        .await?;
        return Err(TransportError::Refused(reason));
    }
    write_frame(s, &Handshake::Welcome).await?;
    Ok(node)
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
            let node = match accept_handshake(&mut s, from, &auth, limit).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(peer = %from, error = %e, "cluster handshake failed");
                    return;
                }
            };
            loop {
                let request: Request = tokio::select! {
                    r = read_frame(&mut s, IDLE) => match r {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::debug!(peer = %from, %node, error = %e, "cluster connection closed");
                            return;
                        }
                    },
                    _ = super::stopped(&mut shutdown) => return,
                };
                let response = handler.handle(request).await;
                if let Err(e) = write_frame(&mut s, &response).await {
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
    conn: Option<Conn>,
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
        let mut conn = match st.conn.take() {
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
            write_frame(&mut conn, request).await?;
            read_frame::<Response>(&mut conn, limit).await
        };
        let response = timeout(limit, exchange)
            .await
            .map_err(|_| TransportError::Timeout(limit))??;
        st.conn = Some(conn);
        Ok(response)
    }
}
