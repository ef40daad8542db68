//! Engine snapshots: a guest that counts is paused, its vCPU and VM saved (through JSON, as the
//! VMM stores them), and restored into a new VM with a copy of its memory; it must count on from
//! where it stopped. Also: a snapshot of the other engine is refused, and KVM's dirty-page log
//! sees the guest's writes.
//!
//! The KVM tests print why they skip when `/dev/kvm` is not usable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hypervisor::emu::{
    ClockMode, EmuConfig, EmuHypervisor, EmuTime, InstructionClock, LocalApics,
    LocalInterruptController, VcpuWaker,
};
use hypervisor::kvm::KvmHypervisor;
use hypervisor::{
    EmuVcpuState, EmuVmState, Hypervisor, HypervisorError, KvmVcpuState, KvmVmState, MemoryRegion,
    SegmentRegister, StandardRegisters, TableRegister, Vcpu, VcpuKicker, VcpuSnapshot, Vm, VmExit,
    VmOps, VmSnapshot,
};

/// Guest RAM: 2 MiB from guest-physical 0, identity-mapped by one large page.
const MEM_SIZE: usize = 0x20_0000;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const GDT: u64 = 0x500;
const CODE: u64 = 0x1_0000;
/// The page the guest writes its counter to.
const PAGE_X: u64 = 0x4_0000;
/// The port the guest writes its counter to.
const OUT_PORT: u16 = 0x80;
/// The port the guest reads (always 1) and sums the reads of in RDX.
const IN_PORT: u16 = 0x81;

/// The guest: counts in RCX, stores the count in page X, reads the in port and adds what it read
/// to RDX, writes the count's low byte to the out port, and again.
const COUNTER: [u8; 20] = [
    0x48, 0xff, 0xc1, // inc rcx
    0x48, 0x89, 0x0b, // mov [rbx], rcx
    0xe4, 0x81, // in al, 0x81
    0x0f, 0xb6, 0xc0, // movzx eax, al
    0x48, 0x01, 0xc2, // add rdx, rax
    0x89, 0xc8, // mov eax, ecx
    0xe6, 0x80, // out 0x80, al
    0xeb, 0xec, // jmp CODE
];
/// Where a vCPU stopped by its `in` resumes.
const AFTER_IN: u64 = CODE + 8;

/// Page-aligned guest memory.
struct GuestMemory {
    ptr: *mut u8,
}

impl GuestMemory {
    fn new() -> Self {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap of guest memory");
        GuestMemory { ptr: ptr.cast() }
    }

    /// The counting machine: page tables, GDT and code.
    fn counter_machine() -> Self {
        let mut mem = Self::new();
        let m = mem.bytes();
        const P_RW: u64 = 0b11;
        const ACCESSED_DIRTY: u64 = 0x60;
        const LARGE: u64 = 0x80;
        put64(m, PML4, PDPT | P_RW | ACCESSED_DIRTY);
        put64(m, PDPT, PD | P_RW | ACCESSED_DIRTY);
        put64(m, PD, P_RW | ACCESSED_DIRTY | LARGE);
        // Null, 64-bit code (0x08), data (0x10).
        put64(m, GDT + 8, 0x00af_9b00_0000_ffff);
        put64(m, GDT + 16, 0x00cf_9300_0000_ffff);
        m[CODE as usize..CODE as usize + COUNTER.len()].copy_from_slice(&COUNTER);
        mem
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps MEM_SIZE bytes owned by `self`; a VM writes them only inside
        // `Vcpu::run`, never while this borrow is alive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, MEM_SIZE) }
    }

    fn read64(&mut self, addr: u64) -> u64 {
        let at = addr as usize;
        u64::from_le_bytes(self.bytes()[at..at + 8].try_into().unwrap())
    }

    fn copy(&mut self) -> Self {
        let mut new = Self::new();
        new.bytes().copy_from_slice(self.bytes());
        new
    }

    fn map_into(&self, vm: &dyn Vm) {
        let region = MemoryRegion {
            guest_addr: 0,
            size: MEM_SIZE as u64,
            host_addr: self.ptr as u64,
        };
        // SAFETY: the mapping lives until `self` drops; every test drops its VMs first.
        unsafe { vm.map_memory(0, region) }.unwrap();
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr` is the mapping made in `new`, of MEM_SIZE bytes.
        unsafe { libc::munmap(self.ptr.cast(), MEM_SIZE) };
    }
}

fn put64(mem: &mut [u8], addr: u64, value: u64) {
    mem[addr as usize..addr as usize + 8].copy_from_slice(&value.to_le_bytes());
}

/// Puts vCPU in 64-bit mode at CPL 0 at the counter.
fn enter_counter(vcpu: &mut dyn Vcpu) {
    let mut sregs = vcpu.sregs().unwrap();
    let code = SegmentRegister {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x08,
        type_: 0xb,
        present: true,
        dpl: 0,
        db: false,
        s: true,
        l: true,
        g: true,
        avl: false,
        unusable: false,
    };
    let data = SegmentRegister {
        selector: 0x10,
        type_: 0x3,
        db: true,
        l: false,
        ..code
    };
    sregs.cs = code;
    for seg in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *seg = data;
    }
    sregs.tr = SegmentRegister {
        selector: 0,
        type_: 0xb,
        s: false,
        db: false,
        g: false,
        limit: 0x67,
        ..code
    };
    sregs.gdt = TableRegister {
        base: GDT,
        limit: 23,
    };
    sregs.idt = TableRegister { base: 0, limit: 0 };
    sregs.cr0 = 0x8005_0033; // PG, AM, WP, NE, ET, MP, PE
    sregs.cr3 = PML4;
    sregs.cr4 = 0x20; // PAE
    sregs.efer = 0x500; // LMA, LME
    vcpu.set_sregs(&sregs).unwrap();
    vcpu.set_regs(&StandardRegisters {
        rbx: PAGE_X,
        rsp: 0x8_0000,
        rip: CODE,
        rflags: 2,
        ..Default::default()
    })
    .unwrap();
}

/// The counter's port accesses: the last value written, the number of reads and writes, and a
/// kick of the (software) vCPU when their sum reaches `stop_at`.
#[derive(Default)]
struct Ports {
    last: AtomicU64,
    ins: AtomicU64,
    outs: AtomicU64,
    stop_at: AtomicU64,
    kicker: Mutex<Option<Arc<dyn VcpuKicker>>>,
}

impl Ports {
    fn accesses(&self) -> u64 {
        self.ins.load(Ordering::SeqCst) + self.outs.load(Ordering::SeqCst)
    }

    fn accessed(&self) {
        if self.accesses() == self.stop_at.load(Ordering::SeqCst)
            && let Some(kicker) = self.kicker.lock().unwrap().as_ref()
        {
            kicker.kick();
        }
    }
}

impl VmOps for Ports {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        assert_eq!(port, IN_PORT);
        data.fill(0);
        data[0] = 1;
        self.ins.fetch_add(1, Ordering::SeqCst);
        self.accessed();
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        assert_eq!(port, OUT_PORT);
        self.last.store(u64::from(data[0]), Ordering::SeqCst);
        self.outs.fetch_add(1, Ordering::SeqCst);
        self.accessed();
    }
    fn mmio_read(&self, _: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&self, _: u64, _: &[u8]) {}
}

/// Through JSON and back, as the VMM stores snapshots.
fn through_json<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
}

// ----- KVM -----

fn kvm() -> Option<KvmHypervisor> {
    match KvmHypervisor::new() {
        Ok(kvm) => Some(kvm),
        Err(e) => {
            eprintln!("skipped: KVM is not usable here: {e}");
            None
        }
    }
}

/// Runs a KVM vCPU until the guest has made `accesses` more port accesses.
fn run_kvm(vcpu: &mut dyn Vcpu, ports: &Ports, accesses: u64) {
    let target = ports.accesses() + accesses;
    while ports.accesses() < target {
        match vcpu.run().unwrap() {
            VmExit::Io => {}
            other => panic!("unexpected exit {other:?} at {:x?}", vcpu.regs()),
        }
    }
}

struct KvmMachine {
    vcpu: Box<dyn Vcpu>,
    vm: Arc<dyn Vm>,
    ports: Arc<Ports>,
}

fn kvm_machine(kvm: &KvmHypervisor, mem: &GuestMemory) -> KvmMachine {
    let ports = Arc::new(Ports::default());
    let vm = kvm.create_vm(ports.clone()).unwrap();
    mem.map_into(vm.as_ref());
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&kvm.supported_cpuid().unwrap()).unwrap();
    KvmMachine { vcpu, vm, ports }
}

#[test]
fn kvm_guest_counts_on_after_restore_in_a_new_vm() {
    let Some(kvm) = kvm() else { return };
    let mut mem = GuestMemory::counter_machine();
    let mut old = kvm_machine(&kvm, &mem);
    old.vcpu.setup_local_apic().unwrap();
    enter_counter(old.vcpu.as_mut());
    // 49 rounds, and the 50th stopped at its `in`.
    run_kvm(old.vcpu.as_mut(), &old.ports, 99);
    assert_eq!(old.ports.last.load(Ordering::SeqCst), 49);
    // An IOAPIC pin's route (the APIC is software-disabled: the message itself is dropped).
    old.vm.signal_msi(5, 0xfee0_0000, 0x8031).unwrap();

    let vcpu_snap = through_json(&old.vcpu.snapshot().unwrap());
    let vm_snap = through_json(&old.vm.snapshot().unwrap());
    let VcpuSnapshot::Kvm(state) = &vcpu_snap else {
        panic!("{vcpu_snap:?}")
    };
    // The `in` was completed before the state was read: its value is in AL and the vCPU resumes
    // after it.
    assert_eq!(
        (
            state.regs.rip,
            state.regs.rax,
            state.regs.rcx,
            state.regs.rdx
        ),
        (AFTER_IN, 1, 50, 49)
    );
    assert_eq!(state.lapic.len(), 1024);
    assert!(state.xsave.len() >= 4096);
    assert!(
        state.msrs.iter().any(|m| m.index == 0x10),
        "IA32_TSC is saved"
    );
    assert!(!state.cpuid.is_empty());
    let tsc_before = state.msrs.iter().find(|m| m.index == 0x10).unwrap().data;
    let mut copy = mem.copy();
    assert_eq!(copy.read64(PAGE_X), 50);

    // The old VM may go on, independently.
    run_kvm(old.vcpu.as_mut(), &old.ports, 5);
    assert_eq!(mem.read64(PAGE_X), 52);
    drop(old);

    let mut new = kvm_machine(&kvm, &copy);
    new.vm.restore(&vm_snap).unwrap();
    new.vcpu.restore(&vcpu_snap).unwrap();
    let regs = new.vcpu.regs().unwrap();
    assert_eq!((regs.rip, regs.rax), (AFTER_IN, 1));
    run_kvm(new.vcpu.as_mut(), &new.ports, 1);
    assert_eq!(
        (
            new.ports.ins.load(Ordering::SeqCst),
            new.ports.last.load(Ordering::SeqCst)
        ),
        (0, 50),
        "the `in` is not run again"
    );
    run_kvm(new.vcpu.as_mut(), &new.ports, 20);
    assert_eq!(new.ports.last.load(Ordering::SeqCst), 60);
    let regs = new.vcpu.regs().unwrap();
    assert_eq!((regs.rcx, regs.rdx), (60, 60));
    assert_eq!(copy.read64(PAGE_X), 60);

    // The restored vCPU's state reads back as saved (the APIC's LINT0 as ExtINT, which only the
    // old vCPU was told), and its TSC went on from the saved one.
    let VcpuSnapshot::Kvm(after) = new.vcpu.snapshot().unwrap() else {
        unreachable!()
    };
    assert_eq!(after.sregs, state.sregs);
    assert_eq!(after.xcrs, state.xcrs);
    let lint0 = |lapic: &[u8]| u32::from_le_bytes(lapic[0x350..0x354].try_into().unwrap());
    assert_eq!(lint0(&state.lapic) & 0x700, 0x700);
    assert_eq!(lint0(&after.lapic), lint0(&state.lapic));
    let VmSnapshot::Kvm(vm_after) = new.vm.snapshot().unwrap() else {
        unreachable!()
    };
    let VmSnapshot::Kvm(vm_before) = &vm_snap else {
        unreachable!()
    };
    assert_eq!(vm_after.msi_routes, vm_before.msi_routes);
    assert_eq!(vm_after.msi_routes.len(), 1);
    assert!(vm_after.clock_ns >= vm_before.clock_ns);
    let tsc_after = after.msrs.iter().find(|m| m.index == 0x10).unwrap().data;
    assert!(tsc_after >= tsc_before, "{tsc_after:#x} < {tsc_before:#x}");
    drop(new);
}

#[test]
fn kvm_refuses_snapshots_of_the_software_cpu() {
    let Some(kvm) = kvm() else { return };
    let mem = GuestMemory::counter_machine();
    let mut m = kvm_machine(&kvm, &mem);
    let err = m
        .vcpu
        .restore(&VcpuSnapshot::Emu(EmuVcpuState::default()))
        .unwrap_err();
    assert!(
        matches!(err, HypervisorError::SnapshotEngineMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "Cannot restore a vCPU snapshot of the emu engine on the kvm engine"
    );
    let err =
        m.vm.restore(&VmSnapshot::Emu(EmuVmState {
            mode: ClockMode::Host,
            now_ns: 0,
            random_state: 0,
        }))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Cannot restore a VM snapshot of the emu engine on the kvm engine"
    );
    drop(m);
}

#[test]
fn kvm_dirty_log_lists_the_pages_the_guest_wrote_once() {
    let Some(kvm) = kvm() else { return };
    let mem = GuestMemory::counter_machine();
    let mut m = kvm_machine(&kvm, &mem);
    assert!(m.vm.dirty_pages().is_err(), "no log before it starts");
    enter_counter(m.vcpu.as_mut());
    run_kvm(m.vcpu.as_mut(), &m.ports, 4);
    m.vm.start_dirty_log().unwrap();
    let page = (PAGE_X / 4096) as usize;
    let dirty = |log: &[(u64, Vec<u64>)]| {
        let (base, bitmap) = &log[0];
        assert_eq!((log.len(), *base), (1, 0));
        assert_eq!(bitmap.len(), MEM_SIZE / 4096 / 64);
        bitmap[page / 64] & (1 << (page % 64)) != 0
    };
    assert!(
        !dirty(&m.vm.dirty_pages().unwrap()),
        "writes before the start"
    );
    run_kvm(m.vcpu.as_mut(), &m.ports, 6);
    let log = m.vm.dirty_pages().unwrap();
    assert!(dirty(&log), "{log:x?}");
    let code = (CODE / 4096) as usize;
    assert_eq!(
        log[0].1[code / 64] & (1 << (code % 64)),
        0,
        "code is not written"
    );
    assert!(
        !dirty(&m.vm.dirty_pages().unwrap()),
        "a read resets the log"
    );
    run_kvm(m.vcpu.as_mut(), &m.ports, 2);
    assert!(dirty(&m.vm.dirty_pages().unwrap()));
    m.vm.stop_dirty_log().unwrap();
    assert!(m.vm.dirty_pages().is_err());
    run_kvm(m.vcpu.as_mut(), &m.ports, 2);
    assert_eq!(m.ports.last.load(Ordering::SeqCst), 7);
    drop(m);
}

// ----- The software CPU -----

/// A local APIC with nothing to deliver.
struct QuietApic;

impl LocalInterruptController for QuietApic {
    fn mmio_base(&self) -> Option<u64> {
        None
    }
    fn mmio_read(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn mmio_write(&self, _: u64, _: &[u8]) -> Option<u8> {
        None
    }
    fn apic_base(&self) -> u64 {
        0
    }
    fn set_apic_base(&self, _: u64) -> bool {
        true
    }
    fn tpr(&self) -> u8 {
        0
    }
    fn set_tpr(&self, _: u8) {}
    fn pending_interrupt(&self) -> Option<u8> {
        None
    }
    fn acknowledge(&self, _: u8) {}
    fn take_nmi(&self) -> bool {
        false
    }
    fn take_init(&self) -> bool {
        false
    }
    fn take_sipi(&self) -> Option<u8> {
        None
    }
    fn accepts_ext_int(&self) -> bool {
        true
    }
    fn wire_legacy_lints(&self) {}
}

struct QuietApics;

impl LocalApics for QuietApics {
    fn create(&self, _: u32, _: VcpuWaker) -> Arc<dyn LocalInterruptController> {
        Arc::new(QuietApic)
    }
    fn deliver_msi(&self, _: u64, _: u32) {}
}

struct EmuMachine {
    vcpu: Box<dyn Vcpu>,
    vm: Arc<dyn Vm>,
    ports: Arc<Ports>,
    time: Arc<EmuTime>,
}

fn emu_machine(mem: &GuestMemory) -> EmuMachine {
    let time = Arc::new(EmuTime::new(ClockMode::Instructions(
        InstructionClock::default(),
    )));
    let engine = EmuHypervisor::new(EmuConfig {
        apics: Arc::new(QuietApics),
        time: time.clone(),
    });
    let ports = Arc::new(Ports::default());
    let vm = engine.create_vm(ports.clone()).unwrap();
    mem.map_into(vm.as_ref());
    let mut vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid(&engine.supported_cpuid().unwrap()).unwrap();
    *ports.kicker.lock().unwrap() = Some(vcpu.kicker());
    EmuMachine {
        vcpu,
        vm,
        ports,
        time,
    }
}

/// Runs a software vCPU until the guest has made `accesses` more port accesses (the last one
/// kicks it, so it stops right after that instruction).
fn run_emu(m: &mut EmuMachine, accesses: u64) {
    let target = m.ports.accesses() + accesses;
    m.ports.stop_at.store(target, Ordering::SeqCst);
    assert_eq!(m.vcpu.run().unwrap(), VmExit::Interrupted);
    assert_eq!(m.ports.accesses(), target);
}

#[test]
fn emu_guest_counts_on_after_restore_in_a_new_vm() {
    let mut mem = GuestMemory::counter_machine();
    let mut old = emu_machine(&mem);
    enter_counter(old.vcpu.as_mut());
    run_emu(&mut old, 99);
    assert_eq!(old.ports.last.load(Ordering::SeqCst), 49);

    let vcpu_snap = through_json(&old.vcpu.snapshot().unwrap());
    let vm_snap = through_json(&old.vm.snapshot().unwrap());
    let VcpuSnapshot::Emu(state) = &vcpu_snap else {
        panic!("{vcpu_snap:?}")
    };
    assert_eq!(state.cpu.rip, AFTER_IN);
    let gpr = &state.cpu.gpr;
    assert_eq!((gpr[0], gpr[1], gpr[2]), (1, 50, 49), "RAX, RCX, RDX");
    assert!(!state.cpuid.is_empty());
    let VmSnapshot::Emu(clock) = vm_snap else {
        panic!("{vm_snap:?}")
    };
    // 49 rounds of eight instructions and three of the 50th, one nanosecond each.
    assert_eq!(clock.now_ns, 49 * 8 + 3);
    let mut copy = mem.copy();
    drop(old);

    let mut new = emu_machine(&copy);
    new.vm.restore(&vm_snap).unwrap();
    new.vcpu.restore(&vcpu_snap).unwrap();
    assert_eq!(
        new.time.now_ns(),
        395,
        "the clock continues from the snapshot"
    );
    run_emu(&mut new, 21);
    assert_eq!(new.ports.ins.load(Ordering::SeqCst), 10);
    assert_eq!(new.ports.last.load(Ordering::SeqCst), 60);
    let regs = new.vcpu.regs().unwrap();
    assert_eq!((regs.rcx, regs.rdx), (60, 60));
    assert_eq!(copy.read64(PAGE_X), 60);
    // The rest of the 50th round (four instructions), then ten of eight with the jmp.
    assert_eq!(new.time.now_ns(), 395 + 4 + 10 * 8);
    let VcpuSnapshot::Emu(after) = new.vcpu.snapshot().unwrap() else {
        unreachable!()
    };
    assert_eq!(after.instructions, state.instructions + 84);
    assert_eq!(after.cpu.seg, state.cpu.seg);
    drop(new);
}

#[test]
fn emu_refuses_kvm_snapshots_and_has_no_dirty_log() {
    let mem = GuestMemory::counter_machine();
    let mut m = emu_machine(&mem);
    let err = m
        .vcpu
        .restore(&VcpuSnapshot::Kvm(KvmVcpuState::default()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Cannot restore a vCPU snapshot of the kvm engine on the emu engine"
    );
    let err =
        m.vm.restore(&VmSnapshot::Kvm(KvmVmState::default()))
            .unwrap_err();
    assert!(
        matches!(err, HypervisorError::SnapshotEngineMismatch { .. }),
        "{err:?}"
    );
    assert!(matches!(
        m.vm.start_dirty_log(),
        Err(HypervisorError::Unsupported(_))
    ));
    assert!(matches!(
        m.vm.dirty_pages(),
        Err(HypervisorError::Unsupported(_))
    ));
    // The refused snapshots changed nothing: the guest still runs from its start.
    enter_counter(m.vcpu.as_mut());
    run_emu(&mut m, 4);
    assert_eq!(m.ports.last.load(Ordering::SeqCst), 2);
    drop(m);
}
