//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): enough to turn
//! `enum skb_drop_reason` values into names at run time, since the numbers change
//! between kernels. aya's BTF accessors are private and btf-rs is LGPL; the format is
//! small (a header, a type section of 12-byte records with kind-specific tails, a
//! string section), see the kernel's Documentation/bpf/btf.rst.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not BTF data: {0}")]
    Format(String),
}

const BTF_MAGIC: u16 = 0xeb9f;

// Type kinds (<linux/btf.h>).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

/// The enumerators of every enum in a BTF blob, by enum name.
pub struct Enums {
    by_name: BTreeMap<String, Vec<(String, i64)>>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn str_at(strings: &[u8], off: u32) -> String {
    let s = strings.get(off as usize..).unwrap_or_default();
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).into_owned()
}

impl Enums {
    /// The running kernel's enums.
    pub fn kernel() -> Result<Enums, BtfError> {
        Enums::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Enums, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Enums::parse(&data)
    }

    /// Parse a little-endian BTF blob (the only byte order this tool runs on).
    pub fn parse(data: &[u8]) -> Result<Enums, BtfError> {
        let bad = |what: &str| BtfError::Format(what.to_string());
        if u16_at(data, 0) != Some(BTF_MAGIC) {
            return Err(bad("bad magic"));
        }
        let hdr_len = u32_at(data, 4).ok_or_else(|| bad("short header"))? as usize;
        let type_off = u32_at(data, 8).ok_or_else(|| bad("short header"))? as usize;
        let type_len = u32_at(data, 12).ok_or_else(|| bad("short header"))? as usize;
        let str_off = u32_at(data, 16).ok_or_else(|| bad("short header"))? as usize;
        let str_len = u32_at(data, 20).ok_or_else(|| bad("short header"))? as usize;
        let types = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or_else(|| bad("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(|| bad("string section out of bounds"))?;

        let mut by_name: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        let mut off = 0;
        while off + 12 <= types.len() {
            let name_off = u32_at(types, off).unwrap_or(0);
            let info = u32_at(types, off + 4).unwrap_or(0);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let signed = info >> 31 == 1;
            off += 12;
            let tail = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_ENUM64 => 12 * vlen,
                _ => 0,
            };
            if kind == KIND_ENUM || kind == KIND_ENUM64 {
                let name = str_at(strings, name_off);
                let step = if kind == KIND_ENUM { 8 } else { 12 };
                let mut values = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let e = off + i * step;
                    let (Some(n), Some(lo)) = (u32_at(types, e), u32_at(types, e + 4)) else {
                        return Err(bad("enum out of bounds"));
                    };
                    let v = if kind == KIND_ENUM {
                        if signed {
                            lo as i32 as i64
                        } else {
                            lo as i64
                        }
                    } else {
                        let hi = u32_at(types, e + 8).unwrap_or(0);
                        ((hi as u64) << 32 | lo as u64) as i64
                    };
                    values.push((str_at(strings, n), v));
                }
                if !name.is_empty() {
                    by_name.entry(name).or_insert(values);
                }
            }
            off += tail;
        }
        Ok(Enums { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&[(String, i64)]> {
        self.by_name.get(name).map(|v| v.as_slice())
    }
}

/// `enum skb_drop_reason` as names without the `SKB_DROP_REASON_` prefix
/// (`NETFILTER_DROP`), as `perf`/`pwru` print them.
pub struct DropReasons {
    names: BTreeMap<u32, String>,
}

impl DropReasons {
    pub fn from_enums(e: &Enums) -> Option<DropReasons> {
        let values = e.get("skb_drop_reason")?;
        let names = values
            .iter()
            .map(|(n, v)| {
                let short = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(n);
                (*v as u32, short.to_string())
            })
            .collect();
        Some(DropReasons { names })
    }

    /// The value of a reason by its short or full name.
    pub fn value(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name || format!("SKB_DROP_REASON_{n}") == name)
            .map(|(v, _)| *v)
    }

    /// The name of a value; numbers without a name (subsystem reasons) as `reason <n>`.
    pub fn name(&self, v: u32) -> String {
        self.names
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("reason {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one enum `e { A = 1, B = -2 }` (signed) built by hand.
    fn blob() -> Vec<u8> {
        let strings = b"\0e\0A\0B\0".to_vec();
        let mut types = Vec::new();
        types.extend_from_slice(&1u32.to_le_bytes()); // name "e"
        types.extend_from_slice(&((1u32 << 31) | (KIND_ENUM << 24) | 2).to_le_bytes());
        types.extend_from_slice(&4u32.to_le_bytes());
        types.extend_from_slice(&3u32.to_le_bytes()); // "A"
        types.extend_from_slice(&1u32.to_le_bytes());
        types.extend_from_slice(&5u32.to_le_bytes()); // "B"
        types.extend_from_slice(&(-2i32 as u32).to_le_bytes());
        let mut b = Vec::new();
        b.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        b.push(1);
        b.push(0);
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(types.len() as u32).to_le_bytes());
        b.extend_from_slice(&(types.len() as u32).to_le_bytes());
        b.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        b.extend_from_slice(&types);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn reads_enumerators_with_their_sign() {
        let e = Enums::parse(&blob()).unwrap();
        assert_eq!(e.get("e").unwrap(), &[("A".into(), 1), ("B".into(), -2)]);
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Enums::parse(b"hello world, not btf at all").is_err());
    }

    #[test]
    fn running_kernel_names_its_netfilter_drop_reason() {
        // Every kernel this tool supports has BTF and the reason; the value is whatever
        // this kernel says.
        let Ok(e) = Enums::kernel() else { return };
        let r = DropReasons::from_enums(&e).expect("enum skb_drop_reason in kernel BTF");
        let v = r.value("NETFILTER_DROP").expect("NETFILTER_DROP");
        assert_eq!(r.name(v), "NETFILTER_DROP");
        assert_eq!(
            r.value("SKB_DROP_REASON_NOT_SPECIFIED"),
            r.value("NOT_SPECIFIED")
        );
    }
}
