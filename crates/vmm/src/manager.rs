//! One VM's lifecycle as an explicit state machine, driven by the API or the CLI.
//!
//! ```text
//!   created --boot--> running --pause--> paused --resume--> running
//!      ^                 |  \--shutdown (guest powers off)--> stopped
//!      |                 +----stop / guest ends-------------> stopped --boot--> running
//!   (config may change in created and stopped)        reboot = stop + boot
//! ```
//! An action that does not fit the state is refused with the state named. The guest's own end
//! (power-off, a failure) moves the VM to stopped; a guest reset boots it again.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Instant;

use api_types::{self as wire, Action, EventKind, VmState};

use crate::api_config::{self, FieldError};
use crate::control::{RunReport, VmOutcome};
use crate::engine::Engine;
use crate::events::EventLog;
use crate::handle::{RunObserver, VmHandle};

/// Why the manager refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManagerError {
    /// The action does not fit the state.
    #[error("Cannot {what} while the VM is {}", state_name(*state))]
    WrongState {
        /// What was asked.
        what: String,
        /// The state.
        state: VmState,
    },
    /// The configuration is invalid.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// The host could not do it.
    #[error("{0}")]
    Failed(String),
}

fn state_name(s: VmState) -> &'static str {
    match s {
        VmState::Created => "created",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::Stopped => "stopped",
    }
}

impl ManagerError {
    fn wrong(what: &str, state: VmState) -> Self {
        ManagerError::WrongState {
            what: what.to_string(),
            state,
        }
    }
}

struct Inner {
    state: VmState,
    config: Option<wire::VmConfig>,
    /// The running VM's controls, once its builder handed them over.
    handle: Option<Arc<VmHandle>>,
    /// The thread running the VM.
    thread: Option<JoinHandle<()>>,
    /// Bumped by every boot, so a finished run cannot clobber a newer one.
    generation: u64,
    last_stop: Option<String>,
    last_outcome: Option<VmOutcome>,
    /// Set while the API stops the VM, so the run's end is not taken for the guest's.
    stopping: bool,
    /// Set during a reboot (or a reboot after a guest reset), when stopped is not the end.
    rebooting: bool,
}

/// A VM and its lifecycle.
pub struct Vmm {
    inner: Mutex<Inner>,
    changed: Condvar,
    events: EventLog,
    default_cmdline: String,
    host_ram: u64,
    /// Reboot the guest when it resets the machine (`popek vmm`); `popek run` ends instead.
    reboot_on_reset: bool,
    me: Weak<Vmm>,
}

impl Vmm {
    /// A VM with no configuration yet, rebooted when its guest resets.
    pub fn new(default_cmdline: &str, host_ram: u64) -> Arc<Vmm> {
        Self::new_with(default_cmdline, host_ram, true)
    }

    /// A VM with no configuration yet; `reboot_on_reset` says whether a guest reset boots it
    /// again or ends it.
    pub fn new_with(default_cmdline: &str, host_ram: u64, reboot_on_reset: bool) -> Arc<Vmm> {
        let vmm = Arc::new_cyclic(|me| Vmm {
            inner: Mutex::new(Inner {
                state: VmState::Created,
                config: None,
                handle: None,
                thread: None,
                generation: 0,
                last_stop: None,
                last_outcome: None,
                stopping: false,
                rebooting: false,
            }),
            changed: Condvar::new(),
            events: EventLog::new(),
            default_cmdline: default_cmdline.to_string(),
            host_ram,
            reboot_on_reset,
            me: me.clone(),
        });
        vmm.events.push(EventKind::Created, None);
        vmm
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        &self.events
    }

    /// The state.
    pub fn state(&self) -> VmState {
        self.lock().state
    }

    /// `GET /vm`.
    pub fn info(&self) -> wire::VmInfo {
        let inner = self.lock();
        wire::VmInfo {
            state: inner.state,
            config: inner.config.clone(),
            engine: inner.handle.as_ref().map(|h| h.engine.to_string()),
            uptime_ms: match (inner.state, &inner.handle) {
                (VmState::Running | VmState::Paused, Some(h)) => {
                    Some(h.booted.elapsed().as_millis() as u64)
                }
                _ => None,
            },
            last_stop: inner.last_stop.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The running (or last) VM's controls.
    pub fn handle(&self) -> Option<Arc<VmHandle>> {
        self.lock().handle.clone()
    }

    /// Sets the whole configuration (created or stopped only). It is checked now, so that a
    /// bad one is refused here rather than at boot.
    pub fn set_config(&self, config: wire::VmConfig) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        if !matches!(inner.state, VmState::Created | VmState::Stopped) {
            return Err(ManagerError::wrong("change the configuration", inner.state));
        }
        self.validate(&config)?;
        inner.config = Some(config);
        drop(inner);
        self.events.push(EventKind::Configured, None);
        Ok(())
    }

    /// Changes the configuration with `f` (created or stopped only).
    pub fn update_config(
        &self,
        f: impl FnOnce(&mut wire::VmConfig) -> Result<(), ManagerError>,
    ) -> Result<(), ManagerError> {
        let current = {
            let inner = self.lock();
            if !matches!(inner.state, VmState::Created | VmState::Stopped) {
                return Err(ManagerError::wrong("change the configuration", inner.state));
            }
            inner.config.clone()
        };
        let mut config = current.ok_or_else(|| ManagerError::Invalid {
            message: "No configuration yet: PUT /vm/config first".into(),
            field: None,
        })?;
        f(&mut config)?;
        self.set_config(config)
    }

    fn validate(&self, c: &wire::VmConfig) -> Result<crate::VmConfig, ManagerError> {
        let request = api_config::request(c, &self.default_cmdline).map_err(
            |FieldError { field, message }| ManagerError::Invalid {
                message: format!("{field}: {message}"),
                field: Some(field),
            },
        )?;
        request
            .validate(self.host_ram)
            .map_err(|e| ManagerError::Invalid {
                field: api_config::config_error_field(&e).map(str::to_string),
                message: e.to_string(),
            })
    }

    /// Carries out `action`.
    pub fn act(&self, action: Action) -> Result<(), ManagerError> {
        match action {
            Action::Boot => self.boot(),
            Action::Pause => self.pause(),
            Action::Resume => self.resume(),
            Action::Shutdown => self.shutdown(),
            Action::Stop => self.stop(),
            Action::Reboot => {
                self.lock().rebooting = true;
                let r = self.stop().and_then(|()| self.boot());
                let mut inner = self.lock();
                inner.rebooting = false;
                self.changed.notify_all();
                drop(inner);
                r
            }
        }
    }

    /// Boots the configured VM (created or stopped); returns once its vCPUs run.
    pub fn boot(&self) -> Result<(), ManagerError> {
        self.start(None)
    }

    /// Resumes the snapshot in `dir` (created or stopped), with a clone's own disks, NICs and
    /// console when given; returns once its vCPUs run.
    pub fn restore(&self, r: wire::RestoreRequest) -> Result<(), ManagerError> {
        {
            let inner = self.lock();
            if !matches!(inner.state, VmState::Created | VmState::Stopped) {
                return Err(ManagerError::wrong("restore a snapshot", inner.state));
            }
        }
        let dir = std::path::PathBuf::from(&r.dir);
        let (header, body): (_, crate::snapshot::state::Body) =
            crate::snapshot::format::read_state(&dir).map_err(|e| ManagerError::Invalid {
                message: e.to_string(),
                field: Some("dir".into()),
            })?;
        if header.kind != crate::snapshot::Kind::Full {
            return Err(ManagerError::Invalid {
                message: format!(
                    "{} is a diff snapshot: merge it with its base first (popek snapshot merge)",
                    dir.display()
                ),
                field: Some("dir".into()),
            });
        }
        let mut config = body.config.clone();
        let count = |what: &str, have: usize, given: usize| {
            if have == given {
                Ok(())
            } else {
                Err(ManagerError::Invalid {
                    message: format!("The snapshot has {have} {what}, {given} were given"),
                    field: Some(what.into()),
                })
            }
        };
        if let Some(disks) = r.disks {
            count("disks", config.disks.len(), disks.len())?;
            config.disks = disks;
        }
        if let Some(nets) = r.nets {
            count("nets", config.nets.len(), nets.len())?;
            config.nets = nets;
        }
        if let Some(serial) = r.serial {
            config.serial = serial;
        }
        config.machine.accel = match body.engine.as_str() {
            "kvm" => wire::Accel::Kvm,
            _ => wire::Accel::Emu,
        };
        self.lock().config = Some(config);
        self.start(Some(crate::RestoreFrom { dir, body }))
    }

    /// `POST /vm/snapshot`.
    pub fn snapshot(&self, r: wire::SnapshotRequest) -> Result<wire::SnapshotInfo, ManagerError> {
        let inner = self.lock();
        if inner.state != VmState::Paused {
            return Err(ManagerError::wrong(
                "take a snapshot (pause first)",
                inner.state,
            ));
        }
        let handle = inner
            .handle
            .clone()
            .ok_or_else(|| ManagerError::wrong("take a snapshot", inner.state))?;
        let start = Instant::now();
        let taken = handle
            .snapshot(std::path::Path::new(&r.dir), r.diff)
            .map_err(|e| match e {
                crate::snapshot::SnapshotError::Unusable(m) => ManagerError::Invalid {
                    message: m,
                    field: Some("dir".into()),
                },
                other => ManagerError::Failed(other.to_string()),
            })?;
        Ok(wire::SnapshotInfo {
            kind: match taken.kind {
                crate::snapshot::Kind::Full => "full".into(),
                crate::snapshot::Kind::Diff => "diff".into(),
            },
            pages_written: taken.pages,
            memory_bytes: taken.memory_bytes,
            duration_ms: start.elapsed().as_millis() as u64,
        })
    }

    fn start(&self, restore: Option<crate::RestoreFrom>) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        if !matches!(inner.state, VmState::Created | VmState::Stopped) {
            return Err(ManagerError::wrong("boot", inner.state));
        }
        let Some(wire_config) = inner.config.clone() else {
            return Err(ManagerError::Invalid {
                message: "No configuration: PUT /vm/config before booting".into(),
                field: None,
            });
        };
        let config = self.validate(&wire_config)?;
        let engine = Engine::select(&config).map_err(|e| ManagerError::Failed(e.to_string()))?;
        if let Some(t) = inner.thread.take() {
            // The previous run has ended (the state says stopped): reap its thread.
            drop(inner);
            let _ = t.join();
            inner = self.lock();
        }
        inner.generation += 1;
        let generation = inner.generation;
        inner.handle = None;
        inner.last_outcome = None;
        inner.stopping = false;
        let me = self.me.clone();
        let thread = std::thread::Builder::new()
            .name("vm".into())
            .spawn(move || {
                let observer = Starter {
                    vmm: me.clone(),
                    generation,
                };
                let result = crate::run_from(&config, engine, &observer, restore.as_ref());
                if let Some(vmm) = me.upgrade() {
                    vmm.ended(generation, result);
                }
            })
            .map_err(|e| ManagerError::Failed(format!("Cannot start the VM thread: {e}")))?;
        inner.thread = Some(thread);
        // Wait until the VM is built and running, or failed to build.
        while inner.generation == generation
            && inner.handle.is_none()
            && inner.last_outcome.is_none()
        {
            inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        match (&inner.handle, &inner.last_outcome) {
            (Some(_), None) => Ok(()),
            (_, Some(VmOutcome::Failed(why))) if inner.handle.is_none() => {
                Err(ManagerError::Failed(why.clone()))
            }
            _ => Ok(()),
        }
    }

    fn pause(&self) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        if inner.state != VmState::Running {
            return Err(ManagerError::wrong("pause", inner.state));
        }
        let handle = inner
            .handle
            .clone()
            .ok_or_else(|| ManagerError::wrong("pause", inner.state))?;
        if !handle.pause() {
            handle.resume();
            return Err(ManagerError::Failed(
                "The vCPUs did not stop within 5 s; the VM keeps running".into(),
            ));
        }
        inner.state = VmState::Paused;
        drop(inner);
        self.events.push(EventKind::Paused, None);
        Ok(())
    }

    fn resume(&self) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        if inner.state != VmState::Paused {
            return Err(ManagerError::wrong("resume", inner.state));
        }
        if let Some(h) = &inner.handle {
            h.resume();
        }
        inner.state = VmState::Running;
        drop(inner);
        self.events.push(EventKind::Resumed, None);
        Ok(())
    }

    fn shutdown(&self) -> Result<(), ManagerError> {
        let inner = self.lock();
        if inner.state != VmState::Running {
            return Err(ManagerError::wrong("press the power button", inner.state));
        }
        if let Some(h) = &inner.handle {
            h.press_power_button();
        }
        drop(inner);
        self.events.push(EventKind::ShutdownRequested, None);
        Ok(())
    }

    /// Stops the VM at once (running or paused) and waits for its end.
    pub fn stop(&self) -> Result<(), ManagerError> {
        let mut inner = self.lock();
        if !matches!(inner.state, VmState::Running | VmState::Paused) {
            return Err(ManagerError::wrong("stop", inner.state));
        }
        inner.stopping = true;
        if let Some(h) = &inner.handle {
            h.stop(VmOutcome::Stopped);
        }
        let thread = inner.thread.take();
        drop(inner);
        if let Some(t) = thread {
            let _ = t.join();
        }
        Ok(())
    }

    /// Waits until the VM is stopped (and not about to reboot); returns how the last run ended.
    pub fn wait_stopped(&self) -> Option<VmOutcome> {
        let mut inner = self.lock();
        while inner.state != VmState::Stopped || inner.rebooting {
            inner = self.changed.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
        inner.last_outcome.clone()
    }

    /// The run of `generation` ended.
    fn ended(&self, generation: u64, result: Result<RunReport, crate::VmmError>) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        let outcome = match result {
            Ok(report) => report.outcome,
            Err(e) => VmOutcome::Failed(e.to_string()),
        };
        let kind = match &outcome {
            VmOutcome::Reset | VmOutcome::TripleFault => EventKind::GuestReset,
            VmOutcome::EmulationFailure { .. } | VmOutcome::Failed(_) => EventKind::GuestPanic,
            _ => EventKind::Stopped,
        };
        let reboot = self.reboot_on_reset && kind == EventKind::GuestReset && !inner.stopping;
        inner.last_stop = Some(outcome.to_string());
        inner.last_outcome = Some(outcome.clone());
        inner.state = VmState::Stopped;
        inner.stopping = false;
        inner.rebooting |= reboot;
        self.changed.notify_all();
        drop(inner);
        self.events.push(kind, Some(outcome.to_string()));
        if kind == EventKind::GuestReset {
            self.events
                .push(EventKind::Stopped, Some(outcome.to_string()));
        }
        if reboot {
            // From a fresh thread: this one is the old run's, which boot() may join.
            if let Some(vmm) = self.me.upgrade() {
                let _ = std::thread::Builder::new()
                    .name("reboot".into())
                    .spawn(move || {
                        let _ = vmm.boot();
                        vmm.lock().rebooting = false;
                        vmm.changed.notify_all();
                    });
            }
        }
    }

    fn started(&self, generation: u64, handle: Arc<VmHandle>) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        inner.handle = Some(handle);
        inner.state = VmState::Running;
        self.changed.notify_all();
        drop(inner);
        self.events.push(EventKind::Booted, None);
    }

    /// The state's name.
    pub fn state_name(&self) -> &'static str {
        state_name(self.state())
    }
}

/// Hands the VM's controls to the manager when the run starts.
struct Starter {
    vmm: Weak<Vmm>,
    generation: u64,
}

impl RunObserver for Starter {
    fn started(&self, handle: Arc<VmHandle>) {
        if let Some(vmm) = self.vmm.upgrade() {
            vmm.started(self.generation, handle);
        }
    }
}

/// Milliseconds since `start`.
pub(crate) fn millis_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}
