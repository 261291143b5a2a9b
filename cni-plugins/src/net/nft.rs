//! A minimal nf_tables netlink client for the masquerade rules: one batch per change,
//! no `nft` process (exec'ing `nft` costs more than the whole rest of an ADD).
//!
//! Builds the same objects `nft` would: table `inet <t>`, a nat base chain on
//! postrouting at srcnat priority, and per-address rules equivalent to
//! `ip saddr A ip daddr != NET ip daddr != 224.0.0.0/4 masquerade comment "C"`,
//! with the comment in the rule's userdata as nft stores it (so `nft list` shows it).

use std::io;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NLA_F_NESTED: u16 = 0x8000;

/// Netlink message builder with nested attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.push(family);
        buf.push(0);
        buf.extend_from_slice(&res_id.to_be_bytes());
        Msg {
            buf,
            nests: Vec::new(),
        }
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }
    fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(kind, &d)
    }
    fn be32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.attr(kind, &v.to_be_bytes())
    }
    fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }
    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

// Expressions.
fn expr(m: &mut Msg, name: &str, data: impl FnOnce(&mut Msg)) {
    m.begin(1); // NFTA_LIST_ELEM
    m.str(1, name); // NFTA_EXPR_NAME
    m.begin(2); // NFTA_EXPR_DATA
    data(m);
    m.end();
    m.end();
}

fn data_value(m: &mut Msg, kind: u16, v: &[u8]) {
    m.begin(kind);
    m.attr(1, v); // NFTA_DATA_VALUE
    m.end();
}

fn meta_nfproto(m: &mut Msg) {
    expr(m, "meta", |m| {
        m.be32(2, 15); // NFTA_META_KEY = NFT_META_NFPROTO
        m.be32(1, 1); // NFTA_META_DREG = NFT_REG_1
    });
}

fn payload_nh(m: &mut Msg, offset: u32, len: u32) {
    expr(m, "payload", |m| {
        m.be32(1, 1); // DREG
        m.be32(2, 1); // BASE = network header
        m.be32(3, offset);
        m.be32(4, len);
    });
}

fn cmp(m: &mut Msg, neq: bool, v: &[u8]) {
    expr(m, "cmp", |m| {
        m.be32(1, 1); // SREG
        m.be32(2, neq as u32); // OP: EQ 0, NEQ 1
        data_value(m, 3, v);
    });
}

fn bitwise_mask(m: &mut Msg, mask: &[u8]) {
    let len = mask.len() as u32;
    let zero = vec![0u8; mask.len()];
    expr(m, "bitwise", |m| {
        m.be32(1, 1); // SREG
        m.be32(2, 1); // DREG
        m.be32(3, len);
        data_value(m, 4, mask);
        data_value(m, 5, &zero);
    });
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `daddr != net` (masked compare).
fn daddr_not_in(m: &mut Msg, daddr_off: u32, net: IpNetwork) {
    let len = if net.is_ipv4() { 4 } else { 16 };
    payload_nh(m, daddr_off, len);
    bitwise_mask(m, &ip_bytes(net.mask()));
    cmp(m, true, &ip_bytes(net.network()));
}

pub struct Nft {
    sock: Socket,
    seq: u32,
}

/// A rule as read back: its handle and comment.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    pub handle: u64,
    pub comment: String,
}

fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((kind, &b[4..len]));
        let adv = (len + 3) & !3;
        b = &b[adv.min(b.len())..];
    }
    out
}

fn comment_of(udata: &[u8]) -> Option<String> {
    let mut b = udata;
    while b.len() >= 2 {
        let (t, l) = (b[0], b[1] as usize);
        if b.len() < 2 + l {
            break;
        }
        if t == 0 {
            let v = &b[2..2 + l];
            let v = v.strip_suffix(&[0]).unwrap_or(v);
            return Some(String::from_utf8_lossy(v).into_owned());
        }
        b = &b[2 + l..];
    }
    None
}

impl Nft {
    pub fn new() -> io::Result<Nft> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Nft { sock, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send `msgs` as one transaction; every message asks for an ACK. Returns the first
    /// error (the kernel then applied none of the batch).
    fn batch(
        &mut self,
        build: impl FnOnce(&mut Vec<Msg>, &mut dyn FnMut() -> u32),
    ) -> io::Result<()> {
        let mut seqs = Vec::new();
        let mut msgs = Vec::new();
        let mut seq = self.seq;
        {
            let mut next = || {
                seq = seq.wrapping_add(1);
                seqs.push(seq);
                seq
            };
            build(&mut msgs, &mut next);
        }
        self.seq = seq.wrapping_add(2);
        let begin = Msg::new(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            self.seq.wrapping_sub(1),
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        let end = Msg::new(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.seq,
            0,
            NFNL_SUBSYS_NFTABLES,
        );
        let mut out = begin.finish();
        let n = msgs.len();
        for m in msgs {
            out.extend(m.finish());
        }
        out.extend(end.finish());
        self.sock.send(&out, 0)?;
        let mut first_err = None;
        let mut replies = 0;
        let mut buf = vec![0u8; 1 << 16];
        while replies < n {
            let len = self.sock.recv(&mut &mut buf[..], 0)?;
            let mut off = 0;
            while off + 16 <= len {
                let mlen = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if mlen < 16 || off + mlen > len {
                    break;
                }
                if kind == NLMSG_ERROR && mlen >= 20 {
                    let code = i32::from_ne_bytes([
                        buf[off + 16],
                        buf[off + 17],
                        buf[off + 18],
                        buf[off + 19],
                    ]);
                    replies += 1;
                    if code != 0 && first_err.is_none() {
                        first_err = Some(io::Error::from_raw_os_error(-code));
                    }
                }
                off += (mlen + 3) & !3;
            }
            if first_err.is_some() {
                break;
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Ensure the table and its nat postrouting chain, and append one masquerade rule per
    /// address, all in one transaction.
    pub fn add_masquerade(
        &mut self,
        table: &str,
        chain: &str,
        addrs: &[IpNetwork],
        comment: &str,
    ) -> io::Result<()> {
        let table = table.to_string();
        let chain = chain.to_string();
        let mut udata = vec![0u8, (comment.len() + 1) as u8];
        udata.extend_from_slice(comment.as_bytes());
        udata.push(0);
        self.batch(|msgs, next| {
            let mut t = Msg::new(
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE,
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
                next(),
                NFPROTO_INET,
                0,
            );
            t.str(1, &table);
            msgs.push(t);
            let mut c = Msg::new(
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN,
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
                next(),
                NFPROTO_INET,
                0,
            );
            c.str(1, &table).str(3, &chain);
            c.begin(4).be32(1, 4).be32(2, 100).end(); // hook postrouting, priority srcnat
            c.be32(5, 1); // policy accept
            c.str(7, "nat");
            msgs.push(c);
            for a in addrs {
                let mut r = Msg::new(
                    (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE,
                    NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
                    next(),
                    NFPROTO_INET,
                    0,
                );
                r.str(1, &table).str(2, &chain);
                r.begin(4);
                let net = IpNetwork::new(a.network(), a.prefix()).unwrap_or(*a);
                let (proto, saddr_off, daddr_off, len, mcast): (u8, u32, u32, u32, IpNetwork) =
                    if a.is_ipv4() {
                        (
                            NFPROTO_IPV4,
                            12,
                            16,
                            4,
                            "224.0.0.0/4".parse().expect("literal"),
                        )
                    } else {
                        (
                            NFPROTO_IPV6,
                            8,
                            24,
                            16,
                            "ff00::/8".parse().expect("literal"),
                        )
                    };
                meta_nfproto(&mut r);
                cmp(&mut r, false, &[proto]);
                payload_nh(&mut r, saddr_off, len);
                cmp(&mut r, false, &ip_bytes(a.ip()));
                daddr_not_in(&mut r, daddr_off, net);
                daddr_not_in(&mut r, daddr_off, mcast);
                expr(&mut r, "masq", |_| {});
                r.end();
                r.attr(7, &udata); // NFTA_RULE_USERDATA
                msgs.push(r);
            }
        })
    }

    /// Rules of `table`/`chain` (empty when the table or chain does not exist). A dump
    /// that a concurrent change interrupted (it may have skipped rules) is redone.
    pub fn rules(&mut self, table: &str, chain: &str) -> io::Result<Vec<RuleInfo>> {
        for _ in 0..50 {
            if let Some(rules) = self.rules_once(table, chain)? {
                return Ok(rules);
            }
        }
        Err(io::Error::other(
            "nftables rule dump kept being interrupted",
        ))
    }

    /// One dump; `None` when the kernel flagged it interrupted.
    fn rules_once(&mut self, table: &str, chain: &str) -> io::Result<Option<Vec<RuleInfo>>> {
        let seq = self.next_seq();
        let mut m = Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            NFPROTO_INET,
            0,
        );
        m.str(1, table).str(2, chain);
        self.sock.send(&m.finish(), 0)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let len = self.sock.recv(&mut &mut buf[..], 0)?;
            let mut off = 0;
            while off + 16 <= len {
                let mlen = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
                    as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let flags = u16::from_ne_bytes([buf[off + 6], buf[off + 7]]);
                if flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                let mseq =
                    u32::from_ne_bytes([buf[off + 8], buf[off + 9], buf[off + 10], buf[off + 11]]);
                if mlen < 16 || off + mlen > len {
                    break;
                }
                let body = &buf[off + 16..off + mlen];
                off += (mlen + 3) & !3;
                if mseq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok((!interrupted).then_some(out)),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
                        if code == 0 || code == -libc::ENOENT {
                            return Ok(Some(out));
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                        let mut info = RuleInfo {
                            handle: 0,
                            comment: String::new(),
                        };
                        for (t, v) in attrs(&body[4..]) {
                            match t {
                                3 if v.len() == 8 => {
                                    info.handle = u64::from_be_bytes(v.try_into().unwrap_or([0; 8]))
                                }
                                7 => info.comment = comment_of(v).unwrap_or_default(),
                                _ => {}
                            }
                        }
                        out.push(info);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Delete rules by handle in one transaction; a rule already gone is not an error
    /// (the rest are retried one by one).
    pub fn delete_rules(&mut self, table: &str, chain: &str, handles: &[u64]) -> io::Result<()> {
        if handles.is_empty() {
            return Ok(());
        }
        let del = |nft: &mut Nft, hs: &[u64]| {
            nft.batch(|msgs, next| {
                for h in hs {
                    let mut m = Msg::new(
                        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE,
                        NLM_F_REQUEST | NLM_F_ACK,
                        next(),
                        NFPROTO_INET,
                        0,
                    );
                    m.str(1, table).str(2, chain).attr(3, &h.to_be_bytes());
                    msgs.push(m);
                }
            })
        };
        match del(self, handles) {
            Ok(()) => Ok(()),
            Err(_) if handles.len() > 1 => {
                for h in handles {
                    match del(self, &[*h]) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

const LINGER: std::time::Duration = std::time::Duration::from_millis(40);

/// Run an nftables change in a detached child ([`super::detach`]) and return as soon as
/// the kernel has answered. Why: closing an nfnetlink socket while a commit's deferred
/// destruction is pending (an RCU grace period, ~8 ms here) waits for it under the
/// netns' nftables commit mutex: longer than the rest of a whole ADD. The child keeps
/// the socket open past that point (lingering after we have answered), so neither we
/// nor the next nftables change on the node pays for it. The transaction itself is
/// complete when the answer arrives: nothing is left pending.
pub fn transact_detached(f: impl FnOnce(&mut Nft) -> io::Result<()>) -> io::Result<()> {
    transact_start(f).and_then(|d| d.wait())
}

/// [`transact_detached`] without waiting: the caller collects the answer later, so the
/// transaction overlaps with its other work.
pub fn transact_start(
    f: impl FnOnce(&mut Nft) -> io::Result<()>,
) -> io::Result<super::detach::Detached> {
    let mut nft = None;
    super::detach::spawn(
        || {
            let n = nft.insert(Nft::new()?);
            f(n)
        },
        || std::thread::sleep(LINGER),
    )
}
