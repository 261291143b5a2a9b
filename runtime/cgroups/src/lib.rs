//! cgroup management for nestbox: detects v1, v2 and hybrid layouts.
