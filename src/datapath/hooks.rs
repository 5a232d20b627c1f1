//! Attaching the program to interfaces: TC ingress (clsact) or XDP.
use std::io;
use std::os::fd::AsFd;

use libbpf_rs::{ProgramHandle, TcHook, TcHookBuilder, Xdp, XdpFlags, TC_INGRESS};

use super::{Datapath, Error, Result};

/// Which program to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Tc,
    Xdp,
}

/// How the program is attached to one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Tc,
    /// In the driver.
    XdpNative,
    /// Generic (skb) XDP, for drivers without native support.
    XdpGeneric,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Tc => "tc",
            Hook::XdpNative => "xdp-native",
            Hook::XdpGeneric => "xdp-generic",
        }
    }

    fn xdp_flags(self) -> XdpFlags {
        match self {
            Hook::XdpGeneric => XdpFlags::SKB_MODE,
            _ => XdpFlags::DRV_MODE,
        }
    }
}

/// Our filter's handle and priority on the clsact ingress hook; fixed so that
/// a restarted daemon replaces its own filter instead of stacking a second.
const TC_HANDLE: u32 = 0x11a;
const TC_PRIORITY: u32 = 1;

impl Datapath {
    pub(super) fn prog(&self, kind: HookKind) -> &ProgramHandle {
        match kind {
            HookKind::Tc => &self.tc_prog,
            HookKind::Xdp => &self.xdp_prog,
        }
    }

    fn tc_hook(&self, ifindex: u32) -> TcHook {
        TcHookBuilder::new(self.tc_prog.as_fd())
            .ifindex(ifindex as i32)
            .replace(true)
            .handle(TC_HANDLE)
            .priority(TC_PRIORITY)
            .hook(TC_INGRESS)
    }

    fn attach_tc(&self, ifindex: u32) -> Result<Hook> {
        let mut hook = self.tc_hook(ifindex);
        // EEXIST from create just means the clsact qdisc is already there.
        if let Err(e) = hook.create() {
            if e.kind() != libbpf_rs::ErrorKind::AlreadyExists {
                return Err(Error::bpf(format!("creating clsact on ifindex {ifindex}"))(
                    e,
                ));
            }
        }
        hook.attach().map_err(Error::bpf(format!(
            "attaching at TC ingress of ifindex {ifindex}"
        )))?;
        Ok(Hook::Tc)
    }

    fn attach_xdp(&self, ifindex: u32) -> Result<Hook> {
        let xdp = Xdp::new(self.xdp_prog.as_fd());
        match xdp.attach(ifindex as i32, XdpFlags::DRV_MODE) {
            Ok(()) => Ok(Hook::XdpNative),
            Err(native) => {
                tracing::debug!(ifindex, error = %native, "no native XDP, trying generic");
                xdp.attach(ifindex as i32, XdpFlags::SKB_MODE)
                    .map_err(Error::bpf(format!("attaching XDP to ifindex {ifindex}")))?;
                Ok(Hook::XdpGeneric)
            }
        }
    }

    /// Attaches the program of `kind` to `ifindex`.
    pub fn attach(&self, ifindex: u32, kind: HookKind) -> Result<Hook> {
        let hook = match kind {
            HookKind::Tc => self.attach_tc(ifindex)?,
            HookKind::Xdp => self.attach_xdp(ifindex)?,
        };
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ifindex, hook);
        Ok(hook)
    }

    /// Forgets an interface that went away (its hook went with it).
    pub fn forget(&self, ifindex: u32) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ifindex);
    }

    pub fn hook_of(&self, ifindex: u32) -> Option<Hook> {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ifindex)
            .copied()
    }

    pub fn attached(&self) -> Vec<(u32, Hook)> {
        let mut v: Vec<(u32, Hook)> = self
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(i, h)| (*i, *h))
            .collect();
        v.sort_unstable_by_key(|(i, _)| *i);
        v
    }

    /// Detaches loxilight's programs, whoever loaded them (an earlier daemon
    /// too), from these interfaces; returns how many hooks it removed.
    pub fn detach_everywhere(ifindexes: impl Iterator<Item = u32>) -> Result<usize> {
        use libbpf_rs::libbpf_sys as sys;
        let ours: std::collections::HashSet<u32> = libbpf_rs::query::ProgInfoIter::default()
            .filter(|p| p.name == "ll_tc_ingress" || p.name == "ll_xdp")
            .map(|p| p.id)
            .collect();
        let mut detached = 0;
        for ifindex in ifindexes {
            // SAFETY: zeroed structs with their sizes set are what libbpf expects.
            let mut hook: sys::bpf_tc_hook = unsafe { std::mem::zeroed() };
            hook.sz = std::mem::size_of::<sys::bpf_tc_hook>() as _;
            hook.ifindex = ifindex as i32;
            hook.attach_point = sys::BPF_TC_INGRESS;
            let mut opts: sys::bpf_tc_opts = unsafe { std::mem::zeroed() };
            opts.sz = std::mem::size_of::<sys::bpf_tc_opts>() as _;
            opts.handle = TC_HANDLE;
            opts.priority = TC_PRIORITY;
            // SAFETY: valid pointers to the structs above.
            if unsafe { sys::bpf_tc_query(&hook, &mut opts) } == 0 && ours.contains(&opts.prog_id) {
                opts.prog_id = 0;
                opts.prog_fd = 0;
                opts.flags = 0;
                let rc = unsafe { sys::bpf_tc_detach(&hook, &opts) };
                if rc != 0 {
                    return Err(Error::Io {
                        what: format!("detaching TC from ifindex {ifindex}"),
                        source: io::Error::from_raw_os_error(-rc),
                    });
                }
                detached += 1;
            }
            for mode in [XdpFlags::DRV_MODE, XdpFlags::SKB_MODE] {
                let mut id = 0u32;
                // SAFETY: a valid out-pointer.
                let rc =
                    unsafe { sys::bpf_xdp_query_id(ifindex as i32, mode.bits() as i32, &mut id) };
                if rc == 0 && ours.contains(&id) {
                    let rc = unsafe {
                        sys::bpf_xdp_detach(ifindex as i32, mode.bits(), std::ptr::null())
                    };
                    if rc != 0 {
                        return Err(Error::Io {
                            what: format!("detaching XDP from ifindex {ifindex}"),
                            source: io::Error::from_raw_os_error(-rc),
                        });
                    }
                    detached += 1;
                }
            }
        }
        Ok(detached)
    }

    /// Detaches from every interface, leaving the clsact qdisc for other users.
    pub fn detach_all(&self) {
        let hooks: Vec<_> = self
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (ifindex, hook) in hooks {
            let res = match hook {
                Hook::Tc => self.tc_hook(ifindex).detach(),
                Hook::XdpNative | Hook::XdpGeneric => {
                    Xdp::new(self.xdp_prog.as_fd()).detach(ifindex as i32, hook.xdp_flags())
                }
            };
            match res {
                Ok(()) => tracing::debug!(ifindex, hook = hook.as_str(), "datapath detached"),
                Err(e) => tracing::warn!(ifindex, error = %e, "detaching the datapath failed"),
            }
        }
    }
}
