//! TEMPORARY stand-in for the firewall datapath contract, so that the control
//! plane compiles on its own branch. The datapath branch (fw4) owns the real
//! file; this commit is dropped when both are merged.
use std::collections::HashMap;

use super::types::ll_counters as Counters;
use super::{Datapath, Error};

pub struct FwEntry {
    pub id: u32,
    pub preference: u32,
    pub src: Option<(std::net::IpAddr, u8)>,
    pub dst: Option<(std::net::IpAddr, u8)>,
    pub sport: (u16, u16),
    pub dport: (u16, u16),
    pub proto: Option<u8>,
    pub ifindex: Option<u32>,
    pub action: FwAction,
    pub record: bool,
    pub mark: Option<u32>,
}

pub enum FwAction {
    Allow,
    Drop,
    Trap,
    Redirect {
        ifindex: u32,
    },
    Snat {
        addr: std::net::IpAddr,
        port: Option<u16>,
    },
    Masquerade,
}

pub enum FwDefault {
    Allow,
    Drop,
}

impl Datapath {
    pub fn set_firewall(&self, _entries: &[FwEntry], _default: FwDefault) -> Result<(), Error> {
        Ok(())
    }

    pub fn firewall_counters(&self) -> Result<HashMap<u32, Counters>, Error> {
        Ok(HashMap::new())
    }
}
