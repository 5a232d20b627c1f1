//! Names of the datapath's enums, read from the object's BTF, so that what
//! the daemon shows follows bpf/lib/common.h without a hand-kept copy.
use std::collections::HashMap;

use libbpf_rs::btf::types::Enum;
use libbpf_rs::btf::Btf;

use super::{Error, Result};

/// The enums whose values the daemon names, with the prefix their members
/// share (dropped from the labels).
const ENUMS: [(&str, &str); 2] = [("ll_reason", "LL_R_"), ("ll_ct_state", "LL_CT_")];

/// Snake-case labels by (enum, value): `LL_R_PASS_NO_ROUTE` is `pass_no_route`.
#[derive(Debug)]
pub(super) struct EnumLabels(HashMap<(&'static str, u32), String>);

impl EnumLabels {
    pub(super) fn read(btf: Option<Btf<'_>>) -> Result<EnumLabels> {
        let missing = |what: String| Error::Io {
            what: "reading the BPF object's BTF".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, what),
        };
        let btf = btf.ok_or_else(|| missing("the object has no BTF".into()))?;
        let mut labels = HashMap::new();
        for (ty, prefix) in ENUMS {
            let e: Enum<'_> = btf
                .type_by_name(ty)
                .ok_or_else(|| missing(format!("no enum {ty}")))?;
            for m in e.iter() {
                let name = m.name.and_then(|n| n.to_str()).unwrap_or_default();
                let label = name
                    .strip_prefix(prefix)
                    .unwrap_or(name)
                    .to_ascii_lowercase();
                labels.insert((ty, m.value as u32), label);
            }
        }
        Ok(EnumLabels(labels))
    }

    pub(super) fn get(&self, ty: &'static str, value: u32) -> Option<&str> {
        self.0.get(&(ty, value)).map(String::as_str)
    }
}
