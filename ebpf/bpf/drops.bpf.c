// SPDX-License-Identifier: GPL-2.0
/* nestbox-netdiag drops: a raw tracepoint on kfree_skb (no tracefs needed) that reports
 * packets freed with a drop reason, filtered in the kernel to the pods asked about: any
 * drop in a pod's netns, or a drop in a node netns of a packet to or from a pod address
 * (also the inner packet of a VXLAN datagram). The tracepoint is system-wide, so the
 * filter keeps everything else (other nodes' identical addresses included) out. */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "netdiag.h"

/* Set by the loader from the kernel's BTF (the numbers are not stable). */
const volatile __u32 reason_not_dropped = 0;
const volatile __u32 reason_consumed = 1;
const volatile __u16 vxlan_port = 8472; /* host order */

/* netns inode → pod index: every drop there is reported. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} pod_netns SEC(".maps");

/* netns inode of the nodes: drops there are reported when an address matches. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} node_netns SEC(".maps");

/* pod address → pod index. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);
	__type(value, __u32);
} pod_addr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} drop_events SEC(".maps");

static __always_inline int read_ipv4(unsigned char *at, struct drop_event *e)
{
	struct iphdr ip;
	if (bpf_probe_read_kernel(&ip, sizeof(ip), at) < 0)
		return -1;
	if ((ip.ihl_version >> 4) != 4)
		return -1;
	e->kind = PKT_IPV4;
	e->saddr = ip.saddr;
	e->daddr = ip.daddr;
	e->proto = ip.protocol;
	unsigned char *l4 = at + (ip.ihl_version & 0x0f) * 4;
	if (ip.frag_off & bpf_htons(0x1fff))
		return 0;
	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
		struct l4ports p;
		if (bpf_probe_read_kernel(&p, sizeof(p), l4) == 0) {
			e->sport = p.source;
			e->dport = p.dest;
		}
	} else if (ip.protocol == IPPROTO_ICMP) {
		struct icmphdr_min ic;
		if (bpf_probe_read_kernel(&ic, sizeof(ic), l4) == 0) {
			e->sport = bpf_htons(((__u16)ic.type << 8) | ic.code);
			e->dport = ic.id;
		}
	}
	return 0;
}

static __always_inline __u32 *lookup_addr(struct drop_event *e)
{
	__u32 *p = bpf_map_lookup_elem(&pod_addr, &e->saddr);
	if (!p)
		p = bpf_map_lookup_elem(&pod_addr, &e->daddr);
	return p;
}

SEC("raw_tp/kfree_skb")
int on_kfree_skb(void *ctx)
{
	/* kfree_skb(skb, location, reason, rx_sk); read the args as an array of u64
	 * (aya rejects the relocation of ctx->args[i]). */
	__u64 *args = ctx;
	struct sk_buff *skb = (struct sk_buff *)args[0];
	__u64 location = args[1];
	__u32 reason = (__u32)args[2];
	if (reason == reason_not_dropped || reason == reason_consumed)
		return 0;

	struct net_device *dev = BPF_CORE_READ(skb, dev);
	__u32 ino = 0;
	if (dev)
		ino = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	else {
		struct sock *sk = BPF_CORE_READ(skb, sk);
		if (sk)
			ino = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	}
	if (!ino)
		return 0;

	__u32 *pod = bpf_map_lookup_elem(&pod_netns, &ino);
	__u8 matched_by = 1;
	if (!pod && !bpf_map_lookup_elem(&node_netns, &ino))
		return 0;

	struct drop_event e = {};
	e.kind = PKT_OTHER;
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 l3 = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	e.l3proto = l3;
	if (l3 == ETH_P_IP && nh != 0xffff) {
		if (read_ipv4(head + nh, &e) == 0 && e.proto == IPPROTO_UDP &&
		    e.dport == bpf_htons(vxlan_port)) {
			/* The pod packet inside a VXLAN datagram: outer IPv4 + UDP + VXLAN + Ethernet. */
			struct iphdr outer;
			if (bpf_probe_read_kernel(&outer, sizeof(outer), head + nh) == 0) {
				unsigned char *ieth = head + nh + (outer.ihl_version & 0x0f) * 4 + 8 + VXLAN_HLEN;
				struct ethhdr eth;
				if (bpf_probe_read_kernel(&eth, sizeof(eth), ieth) == 0 &&
				    eth.h_proto == bpf_htons(ETH_P_IP)) {
					struct drop_event inner = {};
					if (read_ipv4(ieth + sizeof(eth), &inner) == 0 &&
					    (pod || bpf_map_lookup_elem(&pod_addr, &inner.saddr) ||
					     bpf_map_lookup_elem(&pod_addr, &inner.daddr))) {
						e.saddr = inner.saddr;
						e.daddr = inner.daddr;
						e.sport = inner.sport;
						e.dport = inner.dport;
						e.proto = inner.proto;
						e.encap = 1;
					}
				}
			}
		}
	} else if (l3 == ETH_P_ARP && nh != 0xffff) {
		struct arp_ipv4 a;
		if (bpf_probe_read_kernel(&a, sizeof(a), head + nh) == 0) {
			e.kind = PKT_ARP;
			e.saddr = a.spa;
			e.daddr = a.tpa;
			e.sport = a.op;
		}
	}
	if (!pod) {
		if (e.kind == PKT_OTHER)
			return 0;
		pod = lookup_addr(&e);
		if (!pod)
			return 0;
		matched_by = 2;
	}

	struct drop_event *out = bpf_ringbuf_reserve(&drop_events, sizeof(*out), 0);
	if (!out)
		return 0;
	e.ts = bpf_ktime_get_ns();
	e.location = location;
	e.reason = reason;
	e.netns_ino = ino;
	e.len = BPF_CORE_READ(skb, len);
	e.pod = *pod;
	e.matched_by = matched_by;
	if (dev) {
		e.ifindex = BPF_CORE_READ(dev, ifindex);
		bpf_probe_read_kernel_str(e.ifname, sizeof(e.ifname), dev->name);
	}
	__builtin_memcpy(out, &e, sizeof(e));
	bpf_ringbuf_submit(out, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
