//! Profile compilation (nothing is loaded here; tests/load.rs loads filters in children).

use super::*;

fn profile(json: &str) -> LinuxSeccomp {
    match serde_json::from_str(json) {
        Ok(p) => p,
        Err(e) => panic!("profile JSON: {e}"),
    }
}

fn compiled(json: &str) -> Filter {
    match compile(&profile(json)) {
        Ok(f) => f,
        Err(e) => panic!("compile: {e}"),
    }
}

fn pfc(f: &Filter) -> String {
    match f.pfc() {
        Ok(s) => s,
        Err(e) => panic!("pfc: {e}"),
    }
}

#[test]
fn default_errno_with_allow_list() {
    let f = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    let text = pfc(&f);
    assert!(text.contains("action ERRNO(1)"), "{text}");
    assert!(
        text.contains("if ($syscall == 0)"),
        "read must be allowed: {text}"
    );
    assert!(!f.uses_notify());
    assert!(f.skipped_syscalls().is_empty());
}

#[test]
fn default_errno_ret_and_rule_errno_ret() {
    let f = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    let text = pfc(&f);
    assert!(text.contains("action ERRNO(38)"), "{text}");
    assert!(text.contains("action ERRNO(13)"), "{text}");
}

#[test]
fn every_action_compiles() {
    let f = compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["rmdir"], "action": "SCMP_ACT_KILL"},
            {"names": ["link"], "action": "SCMP_ACT_KILL_THREAD"},
            {"names": ["unlink"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["symlink"], "action": "SCMP_ACT_TRAP"},
            {"names": ["chmod"], "action": "SCMP_ACT_TRACE", "errnoRet": 7},
            {"names": ["chown"], "action": "SCMP_ACT_LOG"},
            {"names": ["mknod"], "action": "SCMP_ACT_NOTIFY"}]}"#,
    );
    let text = pfc(&f);
    for want in [
        "ERRNO(1)",
        "action KILL;",
        "KILL_PROCESS",
        "TRAP",
        "TRACE(7)",
        "LOG",
        "0x7fc00000",
    ] {
        assert!(text.contains(want), "{want} missing: {text}");
    }
    assert!(f.uses_notify());
}

#[test]
fn rules_with_the_default_action_are_skipped() {
    let f = compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    let text = pfc(&f);
    assert!(!text.contains("if ($syscall == 0)"), "{text}");
    assert!(text.contains("if ($syscall == 83)"), "{text}");
}

#[test]
fn argument_comparisons() {
    let f = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}, {"index": 1, "value": 3, "op": "SCMP_CMP_LT"}]},
            {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_GE"}, {"index": 1, "value": 9, "op": "SCMP_CMP_LE"}]},
            {"names": ["read"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 2, "value": 4096, "op": "SCMP_CMP_GT"}]}]}"#,
    );
    let text = pfc(&f);
    // clone: flags & 0x7e020000 == 0
    assert!(text.to_lowercase().contains("0x7e020000"), "{text}");
    assert!(text.contains("$a0.lo32 == 8"), "{text}");
    assert!(
        text.contains("$a1.lo32 >= 3"),
        "socket NE+LT are one AND rule: {text}"
    );
}

#[test]
fn argument_index_out_of_range_is_an_error() {
    let r = compile(&profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
    ));
    let msg = r
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("index") && msg.contains('6'), "{msg}");
}

#[test]
fn several_architectures() {
    let f = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["read", "socketcall", "arch_prctl"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    let text = pfc(&f);
    for arch in ["x86_64", "# filter for arch x86 ", "x32"] {
        assert!(text.contains(arch), "{arch} missing: {text}");
    }
}

#[test]
fn unknown_syscalls_are_skipped_not_fatal() {
    let f = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "no_such_syscall_nestbox"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    assert_eq!(f.skipped_syscalls(), ["no_such_syscall_nestbox".to_owned()]);
}

#[test]
fn notify_cannot_be_the_default() {
    let r = compile(&profile(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#));
    assert!(matches!(r, Err(Error::Invalid { .. })));
}

#[test]
fn flags_compile() {
    let f = compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_LOG"}]}"#,
    );
    assert!(f.bpf_instructions().unwrap_or(0) > 0);
}

#[test]
fn feature_lists_are_sorted_and_complete() {
    for list in [
        supported_actions(),
        supported_operators(),
        supported_archs(),
        known_flags(),
        supported_flags(),
    ] {
        let mut sorted = list.clone();
        sorted.sort();
        assert_eq!(list, sorted);
    }
    assert_eq!(supported_actions().len(), 9);
    assert_eq!(supported_operators().len(), 7);
    // Every flag nestbox knows is old enough for the kernels we run on (4.17+).
    assert_eq!(supported_flags(), known_flags());
}

#[test]
fn enosys_stub_only_for_restrictive_defaults() {
    let strict = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    assert!(strict.has_enosys_stub());
    let permissive = compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    assert!(!permissive.has_enosys_stub());
    let already = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    assert!(!already.has_enosys_stub());
}
