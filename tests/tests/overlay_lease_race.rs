//! Two agents started at the same moment never lease the same subnet: the network has
//! room for exactly two subnets, so every trial forces a compare-and-swap conflict to be
//! resolved (20 trials).

mod overlay_common;

use overlay_common::*;

const TWO_SUBNETS: &str = r#"{"Network":"10.250.0.0/22","SubnetLen":24,"SubnetMin":"10.250.1.0","SubnetMax":"10.250.2.0","Backend":{"Type":"vxlan"}}"#;

#[test]
fn simultaneous_agents_never_share_a_subnet() {
    let mut c = Cluster::new(2, TWO_SUBNETS, &[]);
    let url = c.etcd.url();
    for trial in 0..20 {
        c.etcd.del_prefix(&format!("{PREFIX}/subnets/"));
        for n in &c.nodes {
            let _ = std::fs::remove_file(n.env_path());
        }
        // Start both, then wait: the two processes race for the two subnets.
        for n in &mut c.nodes {
            n.start_agent(&url);
        }
        let envs: Vec<String> = c
            .nodes
            .iter()
            .map(|n| {
                n.wait_env();
                n.env_value("FLANNEL_SUBNET").unwrap_or_default()
            })
            .collect();
        assert_ne!(
            envs[0], envs[1],
            "trial {trial}: both nodes leased {}",
            envs[0]
        );
        let leases = c.etcd.leases();
        assert_eq!(leases.len(), 2, "trial {trial}: {leases:?}");
        for n in &c.nodes {
            let (subnet, _) = c.etcd.lease_of(&n.ip).expect("each node holds a lease");
            assert_eq!(
                lease_of_env(&n.env_value("FLANNEL_SUBNET").unwrap_or_default()),
                subnet
            );
        }
        for n in &mut c.nodes {
            n.kill_agent();
        }
    }
    let lost: usize = c
        .nodes
        .iter()
        .map(|n| n.log().matches("compare-and-swap lost").count())
        .sum();
    eprintln!("compare-and-swap conflicts resolved over 20 trials: {lost}");
}

#[test]
fn a_third_agent_waits_when_the_network_is_full() {
    let mut c = Cluster::new(3, TWO_SUBNETS, &[]);
    c.start_all_but(2);
    let url = c.etcd.url();
    c.nodes[2].start_agent(&url);
    let refused = eventually(5, || c.nodes[2].log().contains("no free subnet"));
    assert!(
        refused,
        "third agent did not report exhaustion:\n{}",
        c.nodes[2].log()
    );
    assert!(c.nodes[2].subnet_env().is_none());
    assert_eq!(c.etcd.leases().len(), 2);
}
