//! What the server tests share: a fake VMM with a real lifecycle state machine, and helpers to
//! start a server in a fresh directory and to talk raw bytes to it.

#![allow(dead_code)] // Each test binary uses its own part of this.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::client::Client;
use api::{ApiServer, Backend, BackendError, ServeOptions};
use api_types::{
    Action, DeviceCounters, DiskConfig, Event, EventKind, EventList, ExitCount, NetConfig,
    VcpuCounters, VmConfig, VmConfigPatch, VmCounters, VmInfo, VmState,
};

/// A VMM that keeps a configuration and a state, and records events.
#[derive(Default)]
pub struct FakeVmm {
    inner: Mutex<Inner>,
}

struct Inner {
    state: VmState,
    config: Option<VmConfig>,
    events: Vec<Event>,
}

impl Default for Inner {
    fn default() -> Self {
        let created = Event {
            seq: 1,
            time_ms: 0,
            kind: EventKind::Created,
            detail: None,
        };
        Inner {
            state: VmState::Created,
            config: None,
            events: vec![created],
        }
    }
}

impl Inner {
    fn event(&mut self, kind: EventKind) {
        let seq = self.events.len() as u64 + 1;
        self.events.push(Event {
            seq,
            time_ms: seq * 10,
            kind,
            detail: None,
        });
    }

    fn configurable(&self, what: &str) -> Result<(), BackendError> {
        match self.state {
            VmState::Created | VmState::Stopped => Ok(()),
            state => Err(BackendError::WrongState {
                message: format!("Cannot change the {what} of a {state:?} VM: stop it first"),
                state,
            }),
        }
    }

    fn config(&mut self) -> Result<&mut VmConfig, BackendError> {
        self.config.as_mut().ok_or_else(|| BackendError::Invalid {
            message: "No configuration yet: PUT /vm/config first".into(),
            field: None,
        })
    }
}

fn set<T>(list: &mut Vec<T>, index: usize, item: T, what: &str) -> Result<(), BackendError> {
    match index.cmp(&list.len()) {
        std::cmp::Ordering::Less => list[index] = item,
        std::cmp::Ordering::Equal => list.push(item),
        std::cmp::Ordering::Greater => {
            return Err(BackendError::Invalid {
                message: format!(
                    "There are {} {what}s: the next index is {}",
                    list.len(),
                    list.len()
                ),
                field: Some("index".into()),
            });
        }
    }
    Ok(())
}

impl FakeVmm {
    pub fn state(&self) -> VmState {
        self.inner.lock().unwrap().state
    }
}

impl Backend for FakeVmm {
    fn info(&self) -> VmInfo {
        let inner = self.inner.lock().unwrap();
        VmInfo {
            state: inner.state,
            config: inner.config.clone(),
            engine: (inner.state != VmState::Created).then(|| "emu".into()),
            uptime_ms: None,
            last_stop: None,
            version: "0.1.0".into(),
        }
    }

    fn put_config(&self, config: VmConfig) -> Result<(), BackendError> {
        let mut inner = self.inner.lock().unwrap();
        inner.configurable("configuration")?;
        if config.machine.cpus == 0 {
            return Err(BackendError::Invalid {
                message: "A VM needs at least one vCPU".into(),
                field: Some("machine.cpus".into()),
            });
        }
        inner.config = Some(config);
        inner.event(EventKind::Configured);
        Ok(())
    }

    fn patch_config(&self, patch: VmConfigPatch) -> Result<(), BackendError> {
        let mut inner = self.inner.lock().unwrap();
        inner.configurable("configuration")?;
        let config = inner.config()?;
        if let Some(machine) = patch.machine {
            config.machine = machine;
        }
        if let Some(rng) = patch.rng {
            config.rng = rng;
        }
        inner.event(EventKind::Configured);
        Ok(())
    }

    fn put_disk(&self, index: usize, disk: DiskConfig) -> Result<(), BackendError> {
        if disk.path == "/panic" {
            panic!("the fake VMM panics on /panic");
        }
        let mut inner = self.inner.lock().unwrap();
        inner.configurable("disks")?;
        set(&mut inner.config()?.disks, index, disk, "disk")
    }

    fn put_net(&self, index: usize, net: NetConfig) -> Result<(), BackendError> {
        if net.tap.as_deref() == Some("broken") {
            return Err(BackendError::Failed(
                "Cannot open the tap broken: no such device".into(),
            ));
        }
        let mut inner = self.inner.lock().unwrap();
        inner.configurable("NICs")?;
        set(&mut inner.config()?.nets, index, net, "NIC")
    }

    fn action(&self, action: Action) -> Result<(), BackendError> {
        use VmState::*;
        let mut inner = self.inner.lock().unwrap();
        let (next, event) = match (action, inner.state) {
            (Action::Boot, Created | Stopped) if inner.config.is_some() => {
                (Running, EventKind::Booted)
            }
            (Action::Pause, Running) => (Paused, EventKind::Paused),
            (Action::Resume, Paused) => (Running, EventKind::Resumed),
            (Action::Shutdown, Running) => (Stopped, EventKind::ShutdownRequested),
            (Action::Stop, Running | Paused) => (Stopped, EventKind::Stopped),
            (Action::Reboot, Running | Paused) => (Running, EventKind::Booted),
            (action, state) => {
                return Err(BackendError::WrongState {
                    message: format!("Cannot {action:?} a VM that is {state:?}"),
                    state,
                });
            }
        };
        inner.state = next;
        inner.event(event);
        Ok(())
    }

    fn counters(&self) -> VmCounters {
        VmCounters {
            state: Some(self.state()),
            vcpus: vec![VcpuCounters {
                id: 0,
                exits: vec![ExitCount {
                    reason: "io".into(),
                    count: 42,
                }],
                vmm_seconds: 0.25,
                emulation_fallbacks: 1,
            }],
            devices: vec![DeviceCounters {
                id: "block0".into(),
                kind: "block".into(),
                requests: 7,
                bytes_to_guest: 4096,
                bytes_from_guest: 512,
                errors: 0,
            }],
            guest_memory_bytes: 64 << 20,
            vmm_rss_bytes: 10 << 20,
            log_messages_dropped: 3,
        }
    }

    fn events(&self, since: u64) -> EventList {
        let inner = self.inner.lock().unwrap();
        let events: Vec<Event> = inner
            .events
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect();
        EventList {
            next: inner.events.len() as u64,
            events,
        }
    }
}

/// A server on a socket in a fresh directory, with its fake VMM.
pub struct Running {
    pub server: ApiServer,
    pub vmm: Arc<FakeVmm>,
    pub client: Client,
    pub dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh, empty directory for one test.
pub fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("popek-api-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn start() -> Running {
    start_with(ServeOptions::default())
}

pub fn start_with(options: ServeOptions) -> Running {
    let dir = scratch_dir();
    let vmm = Arc::new(FakeVmm::default());
    let socket = dir.join("api.sock");
    let server = api::serve_with(&socket, vmm.clone(), options).unwrap();
    let client = Client::new(&socket).with_timeout(Duration::from_secs(5));
    Running {
        server,
        vmm,
        client,
        dir,
    }
}

/// A minimal valid configuration.
pub const CONFIG: &str = r#"{"machine":{"cpus":1,"memory_mib":64},"boot":{"kernel":"/k"}}"#;

/// Sends `bytes` as they are, closes the sending side, and returns everything the server
/// answers until it closes.
pub fn raw(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may close before taking everything (413): the reply is still there.
    let _ = s.write_all(bytes);
    // Nothing more comes: a server waiting for more sees the end at once.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw reply.
pub fn status_of(reply: &str) -> u16 {
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
