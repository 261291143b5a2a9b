//! Kernel addresses to `function+0xoff` from /proc/kallsyms (root sees the real
//! addresses; without them every address prints as hex).

use std::path::Path;

pub struct Kallsyms {
    /// Sorted by address.
    syms: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn load() -> Kallsyms {
        Kallsyms::from_file(Path::new("/proc/kallsyms"))
    }

    pub fn from_file(p: &Path) -> Kallsyms {
        Kallsyms::parse(&std::fs::read_to_string(p).unwrap_or_default())
    }

    pub fn parse(text: &str) -> Kallsyms {
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                // Text symbols only: a drop location is code.
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_string()))
            })
            .collect();
        syms.sort_unstable();
        Kallsyms { syms }
    }

    /// `ip_forward+0x1a4`, or the address in hex when nothing covers it.
    pub fn symbolize(&self, addr: u64) -> String {
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        match i.checked_sub(1).and_then(|i| self.syms.get(i)) {
            Some((a, n)) if addr - a < 1 << 20 => format!("{n}+{:#x}", addr - a),
            _ => format!("{addr:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_enclosing_text_symbol() {
        let k = Kallsyms::parse(
            "ffffffff81000000 T _text\nffffffff81000100 t foo\nffffffff81000200 D data\nffffffff81000300 T bar [mod]\n",
        );
        assert_eq!(k.symbolize(0xffffffff81000150), "foo+0x50");
        assert_eq!(k.symbolize(0xffffffff81000300), "bar+0x0");
        assert_eq!(k.symbolize(0x10), "0x10");
    }
}
