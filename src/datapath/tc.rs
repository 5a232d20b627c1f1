//! Attaching the program at TC ingress (clsact) of an interface.
use std::os::fd::AsFd;

use libbpf_rs::{TcHook, TcHookBuilder, TC_INGRESS};

use super::{Datapath, Error, Result};

/// Our filter's handle and priority on the clsact ingress hook; fixed so that
/// a restarted daemon replaces its own filter instead of stacking a second.
const TC_HANDLE: u32 = 0x11a;
const TC_PRIORITY: u32 = 1;

impl Datapath {
    fn hook(&self, ifindex: u32) -> TcHook {
        TcHookBuilder::new(self.prog.as_fd())
            .ifindex(ifindex as i32)
            .replace(true)
            .handle(TC_HANDLE)
            .priority(TC_PRIORITY)
            .hook(TC_INGRESS)
    }

    /// Attaches at ingress of `ifindex`, creating the clsact qdisc if needed.
    pub fn attach(&self, ifindex: u32) -> Result<()> {
        let mut hook = self.hook(ifindex);
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
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ifindex);
        Ok(())
    }

    /// Forgets an interface that went away (its hook went with it).
    pub fn forget(&self, ifindex: u32) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ifindex);
    }

    pub fn attached(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    /// Detaches from every interface, leaving the clsact qdisc for other users.
    pub fn detach_all(&self) {
        let hooks: Vec<_> = self
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for ifindex in hooks {
            if let Err(e) = self.hook(ifindex).detach() {
                tracing::warn!(ifindex, error = %e, "detaching from TC ingress failed");
            }
        }
    }
}
