//! The silicon's side: one KVM VM with one vCPU, reused for every case.
//!
//! A case rewrites its parts of guest memory, sets the registers and runs until the stop port or
//! an exception stub's port is written. Reusing the VM keeps a case at tens of microseconds.

use std::alloc::Layout;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hypervisor::kvm::{HostKvmKind, KvmHypervisor};
use hypervisor::{Hypervisor, MemoryRegion, Vcpu, VcpuKicker, Vm, VmExit, VmOps};

use crate::case::{CaseInput, EPILOGUE_LEN, End, FxState, Snapshot, compared_memory};
use crate::machine::{self, CODE, FX_OUT, KSTACK, KSTACK_TOP, MEM_SIZE, Machine};

/// Errors of the KVM side.
#[derive(Debug, thiserror::Error)]
pub enum KvmSideError {
    /// KVM could not be opened or set up.
    #[error("KVM is not usable")]
    Hypervisor(#[from] hypervisor::HypervisorError),
    /// Guest memory could not be allocated.
    #[error("Cannot allocate {MEM_SIZE} bytes of guest memory")]
    Memory,
}

/// How long one case may run before the watchdog stops it.
const CASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Page-aligned guest memory that outlives the VM using it.
struct GuestMemory {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: the memory is plain bytes owned by this struct; the VM that also writes it runs only on
// the thread that calls `KvmSide::run`, which holds `&mut` to the owner.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    fn new() -> Result<Self, KvmSideError> {
        let layout = Layout::from_size_align(MEM_SIZE, 4096).map_err(|_| KvmSideError::Memory)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(KvmSideError::Memory);
        }
        Ok(GuestMemory { ptr, layout })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `MEM_SIZE` initialised bytes that this struct owns; the vCPU
        // only touches them inside `Vcpu::run`, never while this borrow is alive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, MEM_SIZE) }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the VM that mapped it is dropped first
        // (field order of `KvmSide`).
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// Records the last port written, as `port + 1` (0 = none).
#[derive(Default)]
struct PortLog {
    last: AtomicU32,
}

impl VmOps for PortLog {
    fn pio_read(&self, _: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn pio_write(&self, port: u16, _: &[u8]) {
        self.last.store(u32::from(port) + 1, Ordering::SeqCst);
    }
    fn mmio_read(&self, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&self, _: u64, _: &[u8]) {}
}

/// Kicks the vCPU when a case runs past its deadline.
struct Watchdog {
    /// Deadline in milliseconds since `epoch`, 0 when no case runs.
    deadline: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(kicker: Arc<dyn VcpuKicker>) -> Self {
        let deadline = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let thread = {
            let (deadline, stop) = (deadline.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    let d = deadline.load(Ordering::SeqCst);
                    if d != 0 && epoch.elapsed().as_millis() as u64 > d {
                        kicker.kick();
                    }
                }
            })
        };
        Watchdog {
            deadline,
            stop,
            epoch,
            thread: Some(thread),
        }
    }

    fn arm(&self) {
        let d = (self.epoch.elapsed() + CASE_TIMEOUT).as_millis() as u64;
        self.deadline.store(d.max(1), Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.deadline.store(0, Ordering::SeqCst);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The KVM side of the comparison.
pub struct KvmSide {
    watchdog: Watchdog,
    vcpu: Box<dyn Vcpu>,
    _vm: Arc<dyn Vm>,
    _hv: KvmHypervisor,
    ops: Arc<PortLog>,
    mem: GuestMemory,
    /// The host's kind of KVM, for reports.
    pub kind: HostKvmKind,
}

impl KvmSide {
    /// Opens KVM and builds the test machine. Call from the thread that will run the cases.
    pub fn new() -> Result<Self, KvmSideError> {
        let hv = KvmHypervisor::new()?;
        let ops = Arc::new(PortLog::default());
        let vm = hv.create_vm(ops.clone())?;
        let mut mem = GuestMemory::new()?;
        Machine::build(mem.bytes());
        let region = MemoryRegion {
            guest_addr: 0,
            size: MEM_SIZE as u64,
            host_addr: mem.ptr as u64,
        };
        // SAFETY: `mem` is mapped, writable and owned by the returned `KvmSide`, whose field order
        // drops the VM before the memory.
        unsafe { vm.map_memory(0, region)? };
        let vcpu = vm.create_vcpu(0)?;
        let kicker = vcpu.kicker();
        kicker.bind_current_thread();
        Ok(KvmSide {
            watchdog: Watchdog::new(kicker),
            vcpu,
            _vm: vm,
            _hv: hv,
            ops,
            mem,
            kind: HostKvmKind::detect(),
        })
    }

    /// Runs `case` on the silicon and reports the final state.
    pub fn run(&mut self, case: &CaseInput) -> Result<Snapshot, KvmSideError> {
        case.load(self.mem.bytes());
        self.vcpu.set_sregs(&case.sregs)?;
        let regs = machine::user_regs(&case.gpr, CODE, case.rflags);
        self.vcpu.set_regs(&regs)?;
        self.ops.last.store(0, Ordering::SeqCst);
        self.watchdog.arm();
        let end = loop {
            let exit = self.vcpu.run();
            match exit? {
                VmExit::Io => {
                    let last = self.ops.last.swap(0, Ordering::SeqCst);
                    if last == 0 {
                        continue;
                    }
                    let port = (last - 1) as u16;
                    match machine::stub_vector(port) {
                        Some(v) => break End::Vector(v),
                        None => break End::Other(format!("write to unexpected port {port:#x}")),
                    }
                }
                VmExit::Interrupted => {
                    break End::Other(format!("no end after {CASE_TIMEOUT:?}"));
                }
                VmExit::EmulationFailure(f) => break End::Other(f.to_string()),
                other => break End::Other(format!("KVM exit {other:?}")),
            }
        };
        self.watchdog.disarm();
        let mut regs = self.vcpu.regs()?;
        let mut sregs = self.vcpu.sregs()?;
        let mem = self.mem.bytes();
        // The epilogue's int3 (a trap: the frame holds the address after it) is the normal end.
        // The user state is then the one in the frame; the kernel stack is as the case left it.
        let frame = |slot: u64| {
            let at = (KSTACK_TOP - 40 + 8 * slot) as usize;
            u64::from_le_bytes(mem[at..at + 8].try_into().unwrap_or_default())
        };
        let epilogue = case.epilogue();
        let normal = end == End::Vector(3) && frame(0) == epilogue + EPILOGUE_LEN as u64;
        let mut fx = None;
        let mut end = end;
        if normal {
            end = End::Normal;
            regs.rip = epilogue;
            regs.rflags = frame(2);
            regs.rsp = frame(3);
            sregs.cs = case.sregs.cs;
            sregs.ss = case.sregs.ss;
            sregs.cs.selector = frame(1) as u16;
            sregs.ss.selector = frame(4) as u16;
            fx = Some(FxState::from_image(
                &mem[FX_OUT as usize..FX_OUT as usize + 512],
            ));
            mem[KSTACK as usize..KSTACK_TOP as usize].fill(0);
        }
        Ok(Snapshot {
            end,
            regs,
            sregs,
            mem: compared_memory(mem),
            fx,
        })
    }
}
