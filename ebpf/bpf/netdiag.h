/* Shared between the BPF programs and the loader (ebpf/src/bpf.rs mirrors these
 * layouts with #[repr(C)] structs): events and map keys, and the few protocol headers
 * the programs parse. Addresses and ports stay in network byte order. */
#ifndef NESTBOX_NETDIAG_H
#define NESTBOX_NETDIAG_H

#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

/* What a packet was. */
#define PKT_IPV4 0
#define PKT_ARP 1
#define PKT_OTHER 2

/* One flow at one hop: the key of the trace program's counters. */
struct flow_key {
	__u32 netns_ino;
	__u32 ifindex;
	__be32 saddr;
	__be32 daddr;
	/* TCP/UDP ports; ICMP: sport = type << 8 | code, dport = echo id; ARP: sport = op. */
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 kind;
	/* 0 ingress, 1 egress */
	__u8 dir;
	/* 1 when this is the inner packet of a VXLAN datagram seen on the underlay */
	__u8 encap;
	__u32 pad;
	__u32 pad2;
};

struct flow_stats {
	__u64 packets;
	__u64 bytes;
	__u64 first_ns;
	__u64 last_ns;
};

/* Sent once per new (flow, hop). */
struct flow_event {
	struct flow_key key;
	__u64 ts;
	__u32 len;
	__u32 pad;
};

/* One dropped packet. */
struct drop_event {
	__u64 ts;
	__u64 location;
	__u32 reason;
	__u32 netns_ino;
	__u32 ifindex;
	__u32 len;
	__be32 saddr;
	__be32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 kind;
	__u8 encap;
	__u8 matched_by; /* 1 netns, 2 address */
	__u32 pod;
	__u16 l3proto; /* host order */
	__u16 pad;
	char ifname[16];
};

struct ethhdr {
	unsigned char h_dest[6];
	unsigned char h_source[6];
	__be16 h_proto;
};

struct iphdr {
	__u8 ihl_version;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

/* The start of an Ethernet/IPv4 ARP packet, up to the target address. */
struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	unsigned char sha[6];
	__be32 spa;
	unsigned char tha[6];
	__be32 tpa;
} __attribute__((packed));

struct l4ports {
	__be16 source;
	__be16 dest;
};

struct icmphdr_min {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__be16 id;
};

#define VXLAN_HLEN 8

#endif
