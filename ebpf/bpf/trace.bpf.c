// SPDX-License-Identifier: GPL-2.0
/* nestbox-netdiag trace: tc (clsact/TCX) programs on the hops of a pod's path (the
 * pod's eth0, its host veth, the bridge, the overlay device, the underlay) counting
 * packets per (flow, hop, direction) in a map, and sending one ring-buffer event the
 * first time a flow is seen at a hop. Counting in the map keeps the per-packet cost to
 * a hash lookup; userspace reads the counters when it reports. */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "netdiag.h"

/* Set by the loader before load. */
const volatile __u16 vxlan_port = 8472; /* host order */
const volatile __u8 filter_addrs = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
} flows SEC(".maps");

/* Pod addresses to keep when filter_addrs is set (value unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __be32);
	__type(value, __u32);
} addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} flow_events SEC(".maps");

static __always_inline int parse_ipv4(struct __sk_buff *skb, __u32 off, struct flow_key *k)
{
	struct iphdr ip;
	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return -1;
	k->kind = PKT_IPV4;
	k->saddr = ip.saddr;
	k->daddr = ip.daddr;
	k->proto = ip.protocol;
	__u32 l4 = off + (ip.ihl_version & 0x0f) * 4;
	/* Fragments after the first carry no ports. */
	if (ip.frag_off & bpf_htons(0x1fff))
		return 0;
	if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
		struct l4ports p;
		if (bpf_skb_load_bytes(skb, l4, &p, sizeof(p)) == 0) {
			k->sport = p.source;
			k->dport = p.dest;
		}
	} else if (ip.protocol == IPPROTO_ICMP) {
		struct icmphdr_min ic;
		if (bpf_skb_load_bytes(skb, l4, &ic, sizeof(ic)) == 0) {
			k->sport = bpf_htons(((__u16)ic.type << 8) | ic.code);
			k->dport = ic.id;
		}
	}
	return l4;
}

static __always_inline int parse(struct __sk_buff *skb, struct flow_key *k)
{
	struct ethhdr eth;
	if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0)
		return -1;
	if (eth.h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_ipv4 a;
		if (bpf_skb_load_bytes(skb, sizeof(eth), &a, sizeof(a)) < 0)
			return -1;
		k->kind = PKT_ARP;
		k->saddr = a.spa;
		k->daddr = a.tpa;
		k->sport = a.op;
		return 0;
	}
	if (eth.h_proto != bpf_htons(ETH_P_IP))
		return -1;
	int l4 = parse_ipv4(skb, sizeof(eth), k);
	if (l4 < 0)
		return -1;
	/* A VXLAN datagram on the underlay: count the pod packet inside. */
	if (k->proto == IPPROTO_UDP && k->dport == bpf_htons(vxlan_port)) {
		__u32 inner = l4 + 8 + VXLAN_HLEN;
		struct ethhdr ieth;
		if (bpf_skb_load_bytes(skb, inner, &ieth, sizeof(ieth)) < 0)
			return 0;
		if (ieth.h_proto != bpf_htons(ETH_P_IP))
			return 0;
		struct flow_key ik = {};
		if (parse_ipv4(skb, inner + sizeof(ieth), &ik) < 0)
			return 0;
		ik.encap = 1;
		*k = ik;
	}
	return 0;
}

/* The netns of the device the packet is at. The context pointer is the kernel's
 * sk_buff; bpf_get_netns_cookie() would not do: it answers from the packet's socket,
 * and a forwarded packet has none (init_net's cookie comes back). */
static __always_inline __u32 netns_of(struct __sk_buff *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx;
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (!dev)
		return 0;
	return BPF_CORE_READ(dev, nd_net.net, ns.inum);
}

static __always_inline int handle(struct __sk_buff *skb, __u8 dir)
{
	struct flow_key k = {};
	if (parse(skb, &k) < 0)
		return TC_ACT_UNSPEC;
	if (filter_addrs && !bpf_map_lookup_elem(&addrs, &k.saddr) &&
	    !bpf_map_lookup_elem(&addrs, &k.daddr))
		return TC_ACT_UNSPEC;
	k.netns_ino = netns_of(skb);
	k.ifindex = skb->ifindex;
	k.dir = dir;
	__u64 now = bpf_ktime_get_ns();
	struct flow_stats *s = bpf_map_lookup_elem(&flows, &k);
	if (s) {
		__sync_fetch_and_add(&s->packets, 1);
		__sync_fetch_and_add(&s->bytes, skb->len);
		s->last_ns = now;
		return TC_ACT_UNSPEC;
	}
	struct flow_stats n = { .packets = 1, .bytes = skb->len, .first_ns = now, .last_ns = now };
	if (bpf_map_update_elem(&flows, &k, &n, BPF_NOEXIST) != 0) {
		/* Another CPU made it first: count there. */
		s = bpf_map_lookup_elem(&flows, &k);
		if (s) {
			__sync_fetch_and_add(&s->packets, 1);
			__sync_fetch_and_add(&s->bytes, skb->len);
		}
		return TC_ACT_UNSPEC;
	}
	struct flow_event *e = bpf_ringbuf_reserve(&flow_events, sizeof(*e), 0);
	if (e) {
		e->key = k;
		e->ts = now;
		e->len = skb->len;
		e->pad = 0;
		bpf_ringbuf_submit(e, 0);
	}
	/* TC_ACT_UNSPEC is TCX_NEXT: the packet goes on to whatever else is attached. */
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int trace_ingress(struct __sk_buff *skb)
{
	return handle(skb, 0);
}

SEC("classifier")
int trace_egress(struct __sk_buff *skb)
{
	return handle(skb, 1);
}

char LICENSE[] SEC("license") = "GPL";
