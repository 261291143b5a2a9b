//! `nestbox update [--resources FILE|-] [--memory N] [--cpu-quota N] ... ID`: new resource
//! limits for a container (runc's flags; sizes accept k/m/g suffixes).

use std::io::Read;
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// LinuxResources JSON ("-" for stdin); flags below override its fields.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    #[arg(long = "cpu-quota")]
    pub cpu_quota: Option<i64>,
    #[arg(long = "cpu-share")]
    pub cpu_share: Option<u64>,
    #[arg(long = "cpu-rt-period")]
    pub cpu_rt_period: Option<u64>,
    #[arg(long = "cpu-rt-runtime")]
    pub cpu_rt_runtime: Option<i64>,
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long = "memory-reservation")]
    pub memory_reservation: Option<String>,
    #[arg(long = "memory-swap")]
    pub memory_swap: Option<String>,
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// Accepted for runc compatibility (kernel memory limits are gone from current kernels).
    #[arg(long = "kernel-memory")]
    pub kernel_memory: Option<String>,
    #[arg(long = "kernel-memory-tcp")]
    pub kernel_memory_tcp: Option<String>,
    pub id: String,
}

/// "512", "64k", "100m", "1g" (binary units, as docker/runc parse them); "-1" = unlimited.
fn bytes(text: &str) -> anyhow::Result<i64> {
    let t = text.trim().to_ascii_lowercase();
    if t == "-1" {
        return Ok(-1);
    }
    let t = t.trim_end_matches('b');
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid size {text:?}"))?;
    Ok((n * mult as f64) as i64)
}

fn put(section: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        section.insert(key.into(), v);
    }
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<i32> {
    let mut res: Value = match &args.resources {
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            serde_json::from_str(&s)?
        }
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => json!({}),
    };
    let obj = res
        .as_object_mut()
        .ok_or_else(|| anyhow::anyhow!("resources: not a JSON object"))?;
    let section = |name: &str| -> Map<String, Value> {
        obj.get(name)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let mut memory = section("memory");
    put(
        &mut memory,
        "limit",
        args.memory
            .as_deref()
            .map(bytes)
            .transpose()?
            .map(Value::from),
    );
    put(
        &mut memory,
        "reservation",
        args.memory_reservation
            .as_deref()
            .map(bytes)
            .transpose()?
            .map(Value::from),
    );
    put(
        &mut memory,
        "swap",
        args.memory_swap
            .as_deref()
            .map(bytes)
            .transpose()?
            .map(Value::from),
    );
    let mut cpu = section("cpu");
    put(&mut cpu, "shares", args.cpu_share.map(Value::from));
    put(&mut cpu, "quota", args.cpu_quota.map(Value::from));
    put(&mut cpu, "period", args.cpu_period.map(Value::from));
    put(
        &mut cpu,
        "realtimePeriod",
        args.cpu_rt_period.map(Value::from),
    );
    put(
        &mut cpu,
        "realtimeRuntime",
        args.cpu_rt_runtime.map(Value::from),
    );
    put(&mut cpu, "cpus", args.cpuset_cpus.clone().map(Value::from));
    put(&mut cpu, "mems", args.cpuset_mems.clone().map(Value::from));
    let mut pids = section("pids");
    put(&mut pids, "limit", args.pids_limit.map(Value::from));
    let mut blkio = section("blockIO");
    put(&mut blkio, "weight", args.blkio_weight.map(Value::from));
    for (name, s) in [
        ("memory", memory),
        ("cpu", cpu),
        ("pids", pids),
        ("blockIO", blkio),
    ] {
        if !s.is_empty() {
            obj.insert(name.into(), Value::Object(s));
        }
    }
    let resources: nestbox_runtime::oci_spec::runtime::LinuxResources =
        serde_json::from_value(res).map_err(|e| anyhow::anyhow!("resources: {e}"))?;
    nestbox_runtime::container::update(&cli.root, &args.id, &resources)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn sizes_with_units() {
        assert_eq!(bytes("512").unwrap(), 512);
        assert_eq!(bytes("64k").unwrap(), 65536);
        assert_eq!(bytes("100M").unwrap(), 100 << 20);
        assert_eq!(bytes("1g").unwrap(), 1 << 30);
        assert_eq!(bytes("-1").unwrap(), -1);
        assert!(bytes("x").is_err());
    }
}
