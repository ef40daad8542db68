//! The VMM behind the REST API: [`api::Backend`] over the lifecycle [`Vmm`].

use std::sync::atomic::Ordering;

use api::{Backend, BackendError};
use api_types as wire;

use crate::manager::{ManagerError, Vmm};
use crate::vcpu::EXIT_REASONS;
use crate::virtio_devices::DeviceStats;

impl From<ManagerError> for BackendError {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::WrongState { state, .. } => BackendError::WrongState {
                message: e.to_string(),
                state,
            },
            ManagerError::Invalid { message, field } => BackendError::Invalid { message, field },
            ManagerError::Failed(m) => BackendError::Failed(m),
        }
    }
}

/// The VMM's resident set in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

fn set_index<T>(list: &mut Vec<T>, index: usize, item: T, what: &str) -> Result<(), ManagerError> {
    match index.cmp(&list.len()) {
        std::cmp::Ordering::Less => list[index] = item,
        std::cmp::Ordering::Equal => list.push(item),
        std::cmp::Ordering::Greater => {
            return Err(ManagerError::Invalid {
                message: format!(
                    "{what} {index} would leave a gap: there are {} (use index {} to add one)",
                    list.len(),
                    list.len()
                ),
                field: None,
            });
        }
    }
    Ok(())
}

impl Backend for Vmm {
    fn info(&self) -> wire::VmInfo {
        Vmm::info(self)
    }

    fn put_config(&self, config: wire::VmConfig) -> Result<(), BackendError> {
        Ok(self.set_config(config)?)
    }

    fn patch_config(&self, p: wire::VmConfigPatch) -> Result<(), BackendError> {
        Ok(self.update_config(|c| {
            if let Some(m) = p.machine {
                c.machine = m;
            }
            if let Some(b) = p.boot {
                c.boot = b;
            }
            if let Some(d) = p.disks {
                c.disks = d;
            }
            if let Some(n) = p.nets {
                c.nets = n;
            }
            if let Some(v) = p.vsock {
                c.vsock = Some(v);
            }
            if let Some(r) = p.rng {
                c.rng = r;
            }
            if let Some(s) = p.serial {
                c.serial = s;
            }
            Ok(())
        })?)
    }

    fn put_disk(&self, index: usize, disk: wire::DiskConfig) -> Result<(), BackendError> {
        Ok(self.update_config(|c| set_index(&mut c.disks, index, disk, "Disk"))?)
    }

    fn put_net(&self, index: usize, net: wire::NetConfig) -> Result<(), BackendError> {
        Ok(self.update_config(|c| set_index(&mut c.nets, index, net, "NIC"))?)
    }

    fn action(&self, action: wire::Action) -> Result<(), BackendError> {
        Ok(self.act(action)?)
    }

    fn counters(&self) -> wire::VmCounters {
        let mut out = wire::VmCounters {
            state: Some(self.state()),
            vmm_rss_bytes: rss_bytes(),
            log_messages_dropped: crate::log::dropped(),
            ..Default::default()
        };
        let Some(h) = self.handle() else {
            return out;
        };
        out.guest_memory_bytes = h.memory;
        let fallbacks = h.fallbacks();
        for (id, c) in h.counters.iter().enumerate() {
            out.vcpus.push(wire::VcpuCounters {
                id: id as u32,
                exits: EXIT_REASONS
                    .iter()
                    .zip(&c.exits)
                    .map(|(reason, n)| wire::ExitCount {
                        reason: reason.to_string(),
                        count: n.load(Ordering::Relaxed),
                    })
                    .collect(),
                vmm_seconds: c.vmm_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                emulation_fallbacks: fallbacks.get(id).copied().unwrap_or(0),
            });
        }
        for (id, stats) in &h.devices {
            let r = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let (kind, requests, to_guest, from_guest, errors) = match stats {
                DeviceStats::Block(s) => (
                    "block",
                    r(&s.requests),
                    r(&s.read_bytes),
                    r(&s.written_bytes),
                    r(&s.errors),
                ),
                DeviceStats::Net(s) => (
                    "net",
                    r(&s.rx_frames) + r(&s.tx_frames),
                    r(&s.rx_bytes),
                    r(&s.tx_bytes),
                    r(&s.errors) + r(&s.dropped),
                ),
                DeviceStats::Rng(s) => ("rng", r(&s.requests), r(&s.bytes), 0, r(&s.errors)),
                DeviceStats::Vsock(s) => (
                    "vsock",
                    r(&s.rx_packets) + r(&s.tx_packets),
                    r(&s.rx_bytes),
                    r(&s.tx_bytes),
                    r(&s.errors),
                ),
            };
            out.devices.push(wire::DeviceCounters {
                id: id.clone(),
                kind: kind.into(),
                requests,
                bytes_to_guest: to_guest,
                bytes_from_guest: from_guest,
                errors,
            });
        }
        out
    }

    fn events(&self, since: u64) -> wire::EventList {
        Vmm::events(self).since(since)
    }

    fn snapshot(&self, r: wire::SnapshotRequest) -> Result<wire::SnapshotInfo, BackendError> {
        Ok(Vmm::snapshot(self, r)?)
    }

    fn restore(&self, r: wire::RestoreRequest) -> Result<(), BackendError> {
        Ok(Vmm::restore(self, r)?)
    }
}
