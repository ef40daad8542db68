//! What the server asks of the VMM.

use api_types::{
    Action, DiskConfig, EventList, NetConfig, RestoreRequest, SnapshotInfo, SnapshotRequest,
    VmConfig, VmConfigPatch, VmCounters, VmInfo, VmState,
};

/// Why the VMM refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The request does not fit the VM's state (HTTP 409).
    #[error("{message}")]
    WrongState {
        /// What was refused and why.
        message: String,
        /// The state it was refused in.
        state: VmState,
    },
    /// The request's content is invalid (HTTP 400).
    #[error("{message}")]
    Invalid {
        /// What is wrong and how to fix it.
        message: String,
        /// The field at fault, as a dotted path ("machine.cpus"), if one is.
        field: Option<String>,
    },
    /// The VMM could not carry out a valid request (HTTP 500): a host resource failed.
    #[error("{0}")]
    Failed(String),
}

/// The VMM behind the API. Calls come from the server's threads; each must return promptly
/// (an action waits at most until the vCPUs acknowledge it).
pub trait Backend: Send + Sync {
    /// `GET /vm`.
    fn info(&self) -> VmInfo;
    /// `PUT /vm/config`: replaces the whole configuration (before boot, or when stopped).
    fn put_config(&self, config: VmConfig) -> Result<(), BackendError>;
    /// `PATCH /vm/config`.
    fn patch_config(&self, patch: VmConfigPatch) -> Result<(), BackendError>;
    /// `PUT /vm/config/disks/{index}`: sets disk `index`; `index` = the disk count appends.
    fn put_disk(&self, index: usize, disk: DiskConfig) -> Result<(), BackendError>;
    /// `PUT /vm/config/nets/{index}`: sets NIC `index`; `index` = the NIC count appends.
    fn put_net(&self, index: usize, net: NetConfig) -> Result<(), BackendError>;
    /// `POST /vm/actions`.
    fn action(&self, action: Action) -> Result<(), BackendError>;
    /// `GET /vm/counters` (and the data of `GET /metrics`).
    fn counters(&self) -> VmCounters;
    /// `GET /vm/events?since=N`.
    fn events(&self, since: u64) -> EventList;
    /// `POST /vm/snapshot` (paused).
    fn snapshot(&self, request: SnapshotRequest) -> Result<SnapshotInfo, BackendError> {
        let _ = request;
        Err(BackendError::Failed(
            "This VMM cannot take snapshots".into(),
        ))
    }
    /// `POST /vm/restore` (created or stopped).
    fn restore(&self, request: RestoreRequest) -> Result<(), BackendError> {
        let _ = request;
        Err(BackendError::Failed(
            "This VMM cannot restore snapshots".into(),
        ))
    }
}
