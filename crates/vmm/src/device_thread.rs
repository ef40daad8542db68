//! The device thread: serves the virtqueues of every active virtio device, off the vCPU threads.
//!
//! Transports hand workers over through [`DeviceThread`]'s [`WorkerHost`] side when a driver
//! activates a device, and take them back when it resets one. The thread waits on every fd the
//! workers name (queue eventfds, taps, sockets) and runs the worker whose fd became readable.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;

use devices::virtio::pci::{IoEvent, WorkerHost};
use devices::virtio::{ActivateError, VirtioWorker};
use hypervisor::Vm;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// A worker, taken out (`None`) when its device is reset.
type Slot = Arc<Mutex<Option<Box<dyn VirtioWorker>>>>;

/// Messages to the thread.
enum Command {
    /// Watch a new worker's fds.
    Start(u64, Slot),
    /// Forget a worker, then drop it (after its fds are out of the epoll set).
    Stop(u64, Option<Box<dyn VirtioWorker>>),
    /// Stay idle (no worker runs) until the receiver hears from the guard.
    Hold(mpsc::Sender<()>, mpsc::Receiver<()>),
    /// End the thread.
    Exit,
}

/// While it lives, the device thread runs no worker: queues and guest memory stand still.
pub struct Quiesced {
    _release: mpsc::Sender<()>,
}

/// Epoll data of the thread's own wake-up eventfd.
const WAKE: u64 = u64::MAX;

/// The handle transports use to start and stop workers.
pub struct DeviceThread {
    commands: Mutex<mpsc::Sender<Command>>,
    wake: EventFd,
    next_id: AtomicU64,
    slots: Mutex<HashMap<u64, Slot>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The VM, once it exists, for registering queue notifications as ioeventfds.
    vm: OnceLock<Arc<dyn Vm>>,
}

impl DeviceThread {
    /// Starts the thread.
    pub fn spawn() -> std::io::Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel();
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE),
        )?;
        let thread_wake = wake.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("devices".into())
            .spawn(move || Loop::new(epoll, thread_wake, rx).run())?;
        Ok(Arc::new(Self {
            commands: Mutex::new(tx),
            wake,
            next_id: AtomicU64::new(0),
            slots: Mutex::default(),
            thread: Mutex::new(Some(thread)),
            vm: OnceLock::new(),
        }))
    }

    fn send(&self, c: Command) {
        // The thread only ends on `Exit`: a send error means it is gone, and so is the VM.
        let _ = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(c);
        let _ = self.wake.write(1);
    }

    /// Gives the thread the VM, whose engine may take queue notifications without exits.
    pub fn set_vm(&self, vm: Arc<dyn Vm>) {
        let _ = self.vm.set(vm);
    }

    /// Waits until the device thread is between two workers' calls and keeps it there until
    /// the guard is dropped.
    pub fn quiesce(&self) -> Quiesced {
        let (ack_tx, ack_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        self.send(Command::Hold(ack_tx, release_rx));
        // An error means the thread is gone: nothing runs, which is what was asked.
        let _ = ack_rx.recv();
        Quiesced {
            _release: release_tx,
        }
    }

    /// Stops the thread and drops every worker.
    pub fn shutdown(&self) {
        self.send(Command::Exit);
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl WorkerHost for DeviceThread {
    fn start(&self, worker: Box<dyn VirtioWorker>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot: Slot = Arc::new(Mutex::new(Some(worker)));
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, slot.clone());
        self.send(Command::Start(id, slot));
        id
    }

    fn stop(&self, id: u64) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        // Taking the worker waits for a call in progress on the device thread to finish, so no
        // queue is touched after the driver's reset returns.
        let worker = slot.and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).take());
        self.send(Command::Stop(id, worker));
    }

    fn ioevents_moved(&self, old: &[IoEvent<'_>], new: &[IoEvent<'_>]) {
        let Some(vm) = self.vm.get() else { return };
        for e in old {
            let _ = vm.unregister_ioevent(e.addr, e.fd);
        }
        for e in new {
            // On failure (or an engine without ioeventfds) the transport signals the eventfd
            // itself when the write exits to the VMM.
            let _ = vm.register_ioevent(e.addr, e.fd);
        }
    }

    fn activation_failed(&self, device: &'static str, error: &ActivateError) {
        crate::guest_warn!("virtio {device}: activation failed: {error}");
    }
}

/// The thread's state.
struct Loop {
    epoll: Epoll,
    wake: EventFd,
    commands: mpsc::Receiver<Command>,
    workers: HashMap<u64, (Slot, Vec<RawFd>)>,
    /// Epoll data → (worker, token). Keys are never reused.
    keys: HashMap<u64, (u64, u64)>,
    next_key: u64,
}

impl Loop {
    fn new(epoll: Epoll, wake: EventFd, commands: mpsc::Receiver<Command>) -> Self {
        Self {
            epoll,
            wake,
            commands,
            workers: HashMap::new(),
            keys: HashMap::new(),
            next_key: 0,
        }
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for e in &events[..n] {
                if e.data() == WAKE {
                    let _ = self.wake.read();
                    if !self.commands() {
                        return;
                    }
                    continue;
                }
                let Some(&(id, token)) = self.keys.get(&e.data()) else {
                    continue;
                };
                let Some((slot, _)) = self.workers.get(&id) else {
                    continue;
                };
                let slot = slot.clone();
                let changed = {
                    let mut w = slot.lock().unwrap_or_else(|p| p.into_inner());
                    match w.as_mut() {
                        Some(w) => {
                            w.handle(token);
                            w.sources_changed()
                        }
                        None => false,
                    }
                };
                if changed {
                    self.watch(id, slot);
                }
            }
        }
    }

    /// Applies queued commands; false on `Exit`.
    fn commands(&mut self) -> bool {
        while let Ok(c) = self.commands.try_recv() {
            match c {
                Command::Start(id, slot) => self.watch(id, slot),
                Command::Stop(id, worker) => {
                    self.unwatch(id);
                    drop(worker);
                }
                Command::Hold(ack, release) => {
                    let _ = ack.send(());
                    // Returns when the guard's sender is dropped.
                    let _ = release.recv();
                }
                Command::Exit => return false,
            }
        }
        true
    }

    /// (Re)registers worker `id`'s current fds.
    fn watch(&mut self, id: u64, slot: Slot) {
        self.unwatch(id);
        let sources = match slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(w) => w.sources(),
            None => return,
        };
        let mut fds = Vec::new();
        for (fd, token) in sources {
            let key = self.next_key;
            self.next_key += 1;
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, key),
                )
                .is_ok()
            {
                self.keys.insert(key, (id, token));
                fds.push(fd);
            }
        }
        self.workers.insert(id, (slot, fds));
    }

    fn unwatch(&mut self, id: u64) {
        if let Some((_, fds)) = self.workers.remove(&id) {
            for fd in fds {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            self.keys.retain(|_, (w, _)| *w != id);
        }
    }
}
