//! Path resolution on sample hosts (no filesystem changes).

use super::*;

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
const HYBRID_SELF: &str =
    "4:memory:/process_api/abc\n1:cpu:/\n9:name=systemd:/\n6:freezer:/\n0::/\n";

fn hugetlb_only(_: &Path) -> Vec<String> {
    vec!["hugetlb".to_owned()]
}

fn hybrid(path: Option<&str>) -> Result<Cgroup, Error> {
    Cgroup::resolve_from(HYBRID, HYBRID_SELF, hugetlb_only, path, "c1", false, false)
}

fn p(s: &str) -> Option<PathBuf> {
    Some(PathBuf::from(s))
}

#[test]
fn relative_path_nests_under_own_cgroup_per_hierarchy() -> Result<(), Error> {
    let cg = hybrid(Some("box/c1"))?;
    assert_eq!(cg.layout(), Layout::Hybrid);
    assert_eq!(
        cg.path("memory"),
        p("/sys/fs/cgroup/memory/process_api/abc/box/c1")
    );
    assert_eq!(cg.path("cpu"), p("/sys/fs/cgroup/cpu/box/c1"));
    assert_eq!(cg.path("systemd"), p("/sys/fs/cgroup/systemd/box/c1"));
    assert_eq!(cg.path("hugetlb"), p("/sys/fs/cgroup/unified/box/c1"));
    assert_eq!(cg.path(""), p("/sys/fs/cgroup/unified/box/c1"));
    assert_eq!(cg.path("pids"), None);
    Ok(())
}

#[test]
fn absolute_path_is_taken_as_is() -> Result<(), Error> {
    let cg = hybrid(Some("/abs/c1"))?;
    assert_eq!(cg.path("memory"), p("/sys/fs/cgroup/memory/abs/c1"));
    assert_eq!(cg.path("unified"), p("/sys/fs/cgroup/unified/abs/c1"));
    Ok(())
}

#[test]
fn default_path_is_nestbox_id() -> Result<(), Error> {
    let cg = hybrid(None)?;
    assert_eq!(
        cg.path("memory"),
        p("/sys/fs/cgroup/memory/process_api/abc/nestbox/c1")
    );
    assert_eq!(cg.path("freezer"), p("/sys/fs/cgroup/freezer/nestbox/c1"));
    Ok(())
}

#[test]
fn dotdot_is_refused() {
    assert!(matches!(
        hybrid(Some("../../etc")),
        Err(Error::InvalidPath { .. })
    ));
    assert!(matches!(
        hybrid(Some("/a/../b")),
        Err(Error::InvalidPath { .. })
    ));
}

#[test]
fn systemd_form_needs_systemd() -> Result<(), Error> {
    let r = Cgroup::resolve_from(
        HYBRID,
        HYBRID_SELF,
        hugetlb_only,
        Some("system.slice:nb:c1"),
        "c1",
        true,
        false,
    );
    assert!(matches!(r, Err(Error::SystemdUnsupported)));
    let cg = Cgroup::resolve_from(
        HYBRID,
        HYBRID_SELF,
        hugetlb_only,
        Some("a-b.slice:nb:c1"),
        "c1",
        true,
        true,
    )?;
    assert_eq!(
        cg.path("cpu"),
        p("/sys/fs/cgroup/cpu/a.slice/a-b.slice/nb-c1.scope")
    );
    let bad = Cgroup::resolve_from(
        HYBRID,
        HYBRID_SELF,
        hugetlb_only,
        Some("/x/y"),
        "c1",
        true,
        true,
    );
    assert!(matches!(bad, Err(Error::InvalidPath { .. })));
    Ok(())
}

#[test]
fn pure_v2_gives_one_directory_for_every_controller() -> Result<(), Error> {
    let mi = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
    let cg = Cgroup::resolve_from(
        mi,
        "0::/user.slice/session-1.scope\n",
        |_| vec!["cpu".into(), "memory".into(), "pids".into()],
        Some("c1"),
        "c1",
        false,
        false,
    )?;
    assert_eq!(cg.layout(), Layout::V2);
    let want = p("/sys/fs/cgroup/user.slice/c1");
    assert_eq!(cg.path("memory"), want);
    assert_eq!(cg.path("cpu"), want);
    assert_eq!(cg.hierarchies().len(), 1);
    let top = Cgroup::resolve_from(mi, "0::/\n", |_| vec![], Some("c1"), "c1", false, false)?;
    assert_eq!(top.path(""), p("/sys/fs/cgroup/c1"));
    let one = Cgroup::resolve_from(mi, "0::/init.scope\n", |_| vec![], None, "c1", false, false)?;
    assert_eq!(one.path(""), p("/sys/fs/cgroup/nestbox/c1"));
    Ok(())
}

#[test]
fn bind_mounted_subtree_strips_its_root() -> Result<(), Error> {
    let mi = "50 40 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n";
    let cg = Cgroup::resolve_from(
        mi,
        "4:memory:/docker/abc\n",
        |_| vec![],
        Some("c1"),
        "c1",
        false,
        false,
    )?;
    assert_eq!(cg.path("memory"), p("/sys/fs/cgroup/memory/c1"));
    Ok(())
}

#[test]
fn serde_round_trip() -> Result<(), Error> {
    let cg = hybrid(Some("x"))?;
    let json = serde_json::to_string(&cg).unwrap_or_default();
    let back: Cgroup = serde_json::from_str(&json).map_err(|e| Error::Parse {
        path: PathBuf::new(),
        reason: e.to_string(),
    })?;
    assert_eq!(back, cg);
    Ok(())
}

#[test]
fn of_process_takes_each_hierarchy_path_from_proc_cgroup() -> Result<(), Error> {
    let procs =
        "4:memory:/k8s/pod1/c1\n1:cpu:/k8s/pod1/c1\n9:name=systemd:/\n6:freezer:/f\n0::/u/c1\n";
    let cg = Cgroup::of_process_from(HYBRID, procs, hugetlb_only)?;
    assert_eq!(cg.layout(), Layout::Hybrid);
    assert_eq!(cg.path("memory"), p("/sys/fs/cgroup/memory/k8s/pod1/c1"));
    assert_eq!(cg.path("cpu"), p("/sys/fs/cgroup/cpu/k8s/pod1/c1"));
    assert_eq!(cg.path("freezer"), p("/sys/fs/cgroup/freezer/f"));
    assert_eq!(cg.path("systemd"), p("/sys/fs/cgroup/systemd"));
    assert_eq!(cg.path("hugetlb"), p("/sys/fs/cgroup/unified/u/c1"));
    Ok(())
}

#[test]
fn of_process_strips_the_root_of_a_bound_sub_tree() -> Result<(), Error> {
    let mountinfo = "41 31 0:38 /outer /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n";
    let cg = Cgroup::of_process_from(mountinfo, "0::/outer/ctr\n", hugetlb_only)?;
    assert_eq!(cg.layout(), Layout::V2);
    assert_eq!(cg.path("memory"), p("/sys/fs/cgroup/ctr"));
    Ok(())
}
