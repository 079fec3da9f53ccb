//! Network rules: actions, CIDRs, port ranges, one direction's rule list.
use std::net::IpAddr;

use serde_saphyr::Spanned;

use super::Ctx;
use crate::{
    model::{Direction, NetAction, NetRule, Proto},
    raw::{RawDirection, RawPort},
};

fn net_action(ctx: &mut Ctx<'_>, s: &Spanned<String>, default: bool) -> Option<NetAction> {
    match s.value.as_str() {
        "allow" => Some(NetAction::Allow),
        "deny" => Some(NetAction::Deny),
        "log" if !default => Some(NetAction::Log),
        other => {
            ctx.err(
                s,
                if default {
                    format!("unknown default `{other}` (allow or deny)")
                } else {
                    format!("unknown action `{other}` (allow, deny or log)")
                },
            );
            None
        }
    }
}

pub(crate) fn direction(
    ctx: &mut Ctx<'_>,
    d: &Spanned<RawDirection>,
    which: &str,
) -> Option<Direction> {
    let r = &d.value;
    let default = match &r.default {
        None => NetAction::Allow,
        Some(s) => net_action(ctx, s, true)?,
    };
    let mut rules = Vec::new();
    let mut kernel_rules = 0usize;
    for (i, nr) in r.rules.iter().enumerate() {
        let x = &nr.value;
        let Some(action) = net_action(ctx, &x.action, false) else {
            continue;
        };
        let cidr = match &x.cidr {
            None => None,
            Some(c) => match parse_cidr(&c.value) {
                Ok(v) => v,
                Err(m) => {
                    ctx.err(c, m.to_string());
                    continue;
                }
            },
        };
        let mut ports = Vec::new();
        for p in &x.ports {
            match port_range(&p.value) {
                Ok(r) => ports.push(r),
                Err(m) => ctx.err(p, m.to_string()),
            }
        }
        let proto = match x.protocol.as_ref().map(|p| p.value.as_str()) {
            None | Some("any") => Proto::Any,
            Some("tcp") => Proto::Tcp,
            Some("udp") => Proto::Udp,
            Some("icmp") => Proto::Icmp,
            Some("raw") => Proto::Raw,
            Some("packet") => Proto::Packet,
            Some(other) => {
                if let Some(p) = &x.protocol {
                    ctx.err(
                        p,
                        format!(
                            "unknown protocol `{other}` (tcp, udp, any; egress socket kinds: icmp, raw, packet)"
                        ),
                    );
                }
                continue;
            }
        };
        if proto.is_kind() {
            let at = x.protocol.as_ref().unwrap_or(&x.action);
            if which != "egress" {
                ctx.err(
                    at,
                    "icmp, raw and packet are egress socket kinds (allowed or refused when a socket is created)",
                );
                continue;
            }
            if x.cidr.is_some() || !ports.is_empty() {
                ctx.err(
                    at,
                    "a socket kind is allowed or refused when the socket is created, for every address: give no cidr or ports",
                );
                continue;
            }
        }
        kernel_rules += ports.len().max(1);
        let rule = x
            .name
            .clone()
            .unwrap_or_else(|| format!("network.{which}[{i}]"));
        rules.push(NetRule {
            rule,
            action,
            cidr,
            ports,
            proto,
            loc: ctx.loc(nr),
        });
    }
    if kernel_rules > palisade_common::policy::MAX_NET_RULES {
        ctx.err(
            d,
            format!(
                "{kernel_rules} {which} rules (one per port range); the kernel table holds {}: merge CIDRs or port ranges",
                palisade_common::policy::MAX_NET_RULES
            ),
        );
    }
    Some(Direction {
        default,
        default_rule: format!("network.{which}.default"),
        kind_rule: (which == "egress").then(|| Direction::KIND_RULE.to_owned()),
        rules,
        loc: ctx.loc(d),
    })
}

/// An address or CIDR that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an address or CIDR (e.g. 10.0.0.0/8, ::1/128)")]
    NotAddress(String),
    #[error("`{text}`: the prefix length must be 0 to {max}")]
    PrefixLength { text: String, max: u8 },
    #[error(
        "`{text}` has host bits set after the /{len} prefix (did you mean the network address?)"
    )]
    HostBits { text: String, len: u8 },
}

/// A port or port range that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("port {0} is out of range (1 to 65535)")]
    OutOfRange(u32),
    #[error("`{0}` is not a port or range (e.g. 443 or \"8000-8100\", ports 1 to 65535)")]
    Range(String),
}

/// `10.0.0.0/8`, `10.1.2.3` (a /32), `::1/128`, `0.0.0.0/0`; the host bits must be zero.
pub fn parse_cidr(s: &str) -> Result<Option<(IpAddr, u8)>, CidrError> {
    if s == "any" || s == "*" {
        return Ok(None);
    }
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| CidrError::NotAddress(s.to_owned()))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = match len {
        None => max,
        Some(l) => l
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| CidrError::PrefixLength {
                text: s.to_owned(),
                max,
            })?,
    };
    let bytes: Vec<u8> = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    for (i, b) in bytes.iter().enumerate() {
        let used = (u32::from(len)).saturating_sub(i as u32 * 8).min(8);
        let host_mask = if used >= 8 { 0 } else { 0xffu8 >> used };
        if b & host_mask != 0 {
            return Err(CidrError::HostBits {
                text: s.to_owned(),
                len,
            });
        }
    }
    Ok(Some((addr, len)))
}

pub(crate) fn port_range(p: &RawPort) -> Result<(u16, u16), PortError> {
    let one = |n: u32| u16::try_from(n).ok().filter(|n| *n > 0);
    match p {
        RawPort::Number(n) => one(*n).map(|n| (n, n)).ok_or(PortError::OutOfRange(*n)),
        RawPort::Range(s) => {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            let parse = |x: &str| x.trim().parse::<u32>().ok().and_then(one);
            match (parse(a), parse(b)) {
                (Some(a), Some(b)) if a <= b => Ok((a, b)),
                _ => Err(PortError::Range(s.clone())),
            }
        }
    }
}
