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

/// Makes one [`Connection`] per peer that openraft talks to.
pub struct Network {
    pub auth: Arc<Auth>,
    pub connect_timeout: Duration,
    /// The quorum queue group whose RPCs these are (None: the metadata group).
    pub group: Option<String>,
    /// Told of every member that answers an AppendEntries (the metadata group's).
    pub reached: Option<Arc<super::node_down::Reached>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> Connection {
        Connection {
            target,
            reached: self.reached.clone(),
            group: self.group.clone(),
            peer: Peer::new(
                node.addr.clone(),
                Some(node.name.clone()),
                self.auth.clone(),
                self.connect_timeout,
            ),
        }
    }
}

pub struct Connection {
    target: u64,
    reached: Option<Arc<super::node_down::Reached>>,
    group: Option<String>,
    peer: Peer,
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
        self.peer
            .call(&request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                TransportError::Io(_)
                | TransportError::Backoff(_)
                | TransportError::Refused(_)
                | TransportError::Timeout(_) => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            })
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
