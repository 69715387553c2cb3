//! openraft's network traits over [`super::transport`].

use super::transport::{Auth, Peer, Request, Response, TransportError};
use super::{NodeInfo, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use std::sync::Arc;
use std::time::Duration;

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, NodeInfo, RaftError<u64, E>>;

/// Where each member is now, as the metadata group's membership says (set once the cluster
/// is up). A member that comes back at another address is moved there in that membership;
/// every group's connection to it that stops answering looks here and dials the new address,
/// since a quorum group's own membership keeps the address the member had when it joined.
#[derive(Default)]
pub struct Addresses(std::sync::OnceLock<std::sync::Weak<dyn super::forward::Members>>);

impl Addresses {
    pub fn set(&self, members: std::sync::Weak<dyn super::forward::Members>) {
        let _ = self.0.set(members);
    }

    /// The address the metadata membership has for member `name`.
    pub(crate) fn of(&self, name: &str) -> Option<String> {
        self.0.get()?.upgrade()?.address_of(name)
    }
}

/// Makes one [`Connection`] per peer that openraft talks to.
pub struct Network {
    pub auth: Arc<Auth>,
    pub connect_timeout: Duration,
    /// The quorum queue group whose RPCs these are (None: the metadata group).
    pub group: Option<String>,
    /// Told of every member that answers an AppendEntries (the metadata group's).
    pub reached: Option<Arc<super::node_down::Reached>>,
    pub addresses: Arc<Addresses>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Connection {
        let addr = self.addresses.of(&node.name).unwrap_or(node.addr.clone());
        Connection {
            target,
            name: node.name.clone(),
            reached: self.reached.clone(),
            group: self.group.clone(),
            peer: std::sync::Mutex::new(Arc::new(dial(
                addr,
                &node.name,
                &self.auth,
                self.connect_timeout,
            ))),
            auth: self.auth.clone(),
            connect_timeout: self.connect_timeout,
            addresses: self.addresses.clone(),
        }
    }
}

/// A peer for member `name` at `addr` (its name checked at the handshake).
fn dial(addr: String, name: &str, auth: &Arc<Auth>, connect_timeout: Duration) -> Peer {
    Peer::new(addr, Some(name.to_owned()), auth.clone(), connect_timeout)
}

pub struct Connection {
    target: u64,
    name: String,
    reached: Option<Arc<super::node_down::Reached>>,
    group: Option<String>,
    /// Replaced when the member moved (see [`Addresses`]).
    peer: std::sync::Mutex<Arc<Peer>>,
    auth: Arc<Auth>,
    connect_timeout: Duration,
    addresses: Arc<Addresses>,
}

impl Connection {
    async fn call<E: std::error::Error>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<u64, NodeInfo, RaftError<u64, E>>> {
        let request = match &self.group {
            Some(group) => Request::Group {
                group: group.clone(),
                request: Box::new(request),
            },
            None => request,
        };
        let peer = self.peer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        peer.call(&request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                TransportError::Io(_)
                | TransportError::Backoff(_)
                | TransportError::Refused(_)
                | TransportError::Timeout(_) => {
                    self.follow_move(&peer);
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            })
    }

    /// After `peer` did not answer: the next call dials the member where the membership
    /// has it now, if that is somewhere else.
    fn follow_move(&self, peer: &Peer) {
        let Some(addr) = self.addresses.of(&self.name) else {
            return;
        };
        if addr == peer.addr() {
            return;
        }
        tracing::info!(node = %self.name, from = %peer.addr(), to = %addr, "cluster: a member moved; dialing its new address");
        let moved = dial(addr, &self.name, &self.auth, self.connect_timeout);
        *self.peer.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(moved);
    }

    fn unexpected<E: std::error::Error>(&self) -> RPCError<u64, NodeInfo, RaftError<u64, E>> {
        let e = TransportError::Protocol("response of the wrong kind");
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        match self.call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(r) => {
                if let Some(reached) = &self.reached {
                    reached.reached(self.target);
                }
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected()),
        }
    }
}
