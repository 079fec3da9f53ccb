//! `linux.resources`: memory, cpu, pids and device rules, checked against the kernel's
//! minimums; everything else in it is refused by name.
use super::{
    super::plan::{self, DeviceRule, Resources},
    Obj, Result, bad,
};

pub fn parse(mut r: Obj) -> Result<(Resources, Vec<DeviceRule>)> {
    let mut res = Resources::default();
    let mut devices = Vec::new();
    for d in r.take_array("devices")? {
        let mut o = d.obj()?;
        let allow = o.require("allow")?.bool()?;
        let kind = match o.take("type") {
            None => 'a',
            Some(t) => match t.str()?.as_str() {
                "a" => 'a',
                "c" => 'c',
                "b" => 'b',
                other => return Err(t.err(format!("device type `{other}`: expected a, c or b"))),
            },
        };
        let major = o.take("major").map(|f| f.i64()).transpose()?;
        let minor = o.take("minor").map(|f| f.i64()).transpose()?;
        let access = o.take_str("access")?.unwrap_or_else(|| "rwm".into());
        if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(bad(o.path(), format!("access `{access}`: some of r, w, m")));
        }
        o.finish()?;
        let num = |n: Option<i64>| n.filter(|n| *n >= 0).map(|n| n as u32);
        devices.push(DeviceRule {
            allow,
            kind,
            major: num(major),
            minor: num(minor),
            access,
        });
    }
    if let Some(mut m) = r.take_obj("memory")? {
        if let Some(f) = m.take("limit") {
            let v = f.i64()?;
            if v > 0 {
                let limit =
                    plan::check_memory(v as u64).map_err(|e| f.err(format!("limit {e}")))?;
                res.memory = Some(limit);
            }
        }
        if let Some(f) = m.take("swap") {
            let v = f.i64()?;
            if v > 0 && res.memory.is_some_and(|l| (v as u64) < l) {
                return Err(f.err("memory+swap must be at least the memory limit (or -1)"));
            }
            res.memory_swap = Some(v);
        }
        if let Some(f) = m.take("reservation") {
            let v = f.i64()?;
            if v > 0 {
                res.memory_reservation = Some(v as u64);
            }
        }
        m.ignore("useHierarchy");
        for key in [
            "kernel",
            "kernelTCP",
            "swappiness",
            "disableOOMKiller",
            "checkBeforeUpdate",
        ] {
            m.unsupported(key, "only limit, reservation and swap are applied")?;
        }
        m.finish()?;
    }
    if let Some(mut c) = r.take_obj("cpu")? {
        if let Some(f) = c.take("shares") {
            let v = f.u64()?;
            let (lo, hi) = plan::CPU_SHARES_RANGE;
            if !(lo..=hi).contains(&v) {
                return Err(f.err(format!("must be {lo} to {hi}")));
            }
            res.cpu_shares = Some(v);
        }
        if let Some(f) = c.take("period") {
            let v = f.u64()?;
            let (lo, hi) = plan::CPU_PERIOD_RANGE;
            if !(lo..=hi).contains(&v) {
                return Err(f.err(format!("must be {lo} to {hi} microseconds (kernel limits)")));
            }
            res.cpu_period = Some(v);
        }
        if let Some(f) = c.take("quota") {
            let v = f.i64()?;
            if v > 0 {
                if (v as u64) < plan::MIN_CPU_QUOTA_US {
                    return Err(f.err("below the kernel's minimum quota of 1000 microseconds"));
                }
                res.cpu_quota = Some(v as u64);
            }
        }
        for key in [
            "realtimeRuntime",
            "realtimePeriod",
            "cpus",
            "mems",
            "idle",
            "burst",
        ] {
            c.unsupported(key, "only shares, quota and period are applied")?;
        }
        c.finish()?;
    }
    if let Some(mut p) = r.take_obj("pids")? {
        if let Some(f) = p.take("limit") {
            let v = f.i64()?;
            if v > 0 {
                res.pids = Some(plan::check_pids(v).map_err(|e| f.err(format!("limit {e}")))?);
            }
        }
        p.finish()?;
    }
    for key in ["blockIO", "hugepageLimits", "network", "rdma", "unified"] {
        r.unsupported(key, "only memory, cpu, pids and devices are applied")?;
    }
    r.finish()?;
    Ok((res, devices))
}
