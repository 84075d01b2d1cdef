//! The limits hostile clients meet: who is let in at accept (connections, handshakes in progress,
//! connects per IP) and how fast an admitted connection may send packets.
//!
//! Everything here is bounded whatever the clients do: the per-IP table holds at most
//! [`MAX_TRACKED_IPS`] addresses (32 bytes each plus the hash table's slack: ≤ 4.5 MB) and is pruned as buckets refill, and the
//! per-connection packet counter is 8 bytes in the connection's read loop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most client addresses whose connect rate is tracked at once. Past it, once
/// pruning frees nothing, new addresses are admitted untracked (logged): a flood from that many
/// addresses is met by `max_connections` and `max_handshakes`, not by a per-address limit.
pub const MAX_TRACKED_IPS: usize = 65_536;

/// How often idle (full) buckets are dropped from the table.
const PRUNE_EVERY: Duration = Duration::from_secs(5);

/// A client address as the connect-rate limit sees it: IPv4 as is, IPv6 by its /64 (one host
/// usually holds a whole /64).
fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(v6) >> 64 << 64) | (1 << 32),
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens left (one per connect), up to the burst.
    tokens: f32,
    /// Milliseconds since the limiter's epoch at the last refill.
    at_ms: u64,
}

/// Token buckets per client address: `rate` connects per second, a burst of `rate`.
#[derive(Debug)]
pub struct ConnectRate {
    rate: u32,
    epoch: Instant,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    buckets: HashMap<u128, Bucket>,
    pruned_ms: u64,
}

/// The outcome of [`ConnectRate::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Over the address's rate.
    No,
    /// The table is full of active addresses: admitted without a bucket.
    Untracked,
}

impl ConnectRate {
    /// `rate` 0 = no limit.
    pub fn new(rate: u32) -> ConnectRate {
        ConnectRate { rate, epoch: Instant::now(), table: Mutex::new(Table::default()) }
    }

    /// Take a token for a connect from `ip` (now).
    pub fn admit(&self, ip: IpAddr) -> Admit {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(&self, ip: IpAddr, now: Instant) -> Admit {
        if self.rate == 0 {
            return Admit::Yes;
        }
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let burst = self.rate as f32;
        let refill = |b: &Bucket| (b.tokens + (now_ms.saturating_sub(b.at_ms)) as f32 * self.rate as f32 / 1000.0).min(burst);
        // A poisoned lock only means a panic elsewhere mid-update of plain numbers: still usable.
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms.saturating_sub(table.pruned_ms) >= PRUNE_EVERY.as_millis() as u64 {
            table.pruned_ms = now_ms;
            table.buckets.retain(|_, b| refill(b) < burst);
        }
        let key = ip_key(ip);
        if !table.buckets.contains_key(&key) && table.buckets.len() >= MAX_TRACKED_IPS {
            table.pruned_ms = now_ms;
            table.buckets.retain(|_, b| refill(b) < burst);
            if table.buckets.len() >= MAX_TRACKED_IPS {
                return Admit::Untracked;
            }
        }
        let bucket = table.buckets.entry(key).or_insert(Bucket { tokens: burst, at_ms: now_ms });
        bucket.tokens = refill(bucket);
        bucket.at_ms = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Admit::Yes
        } else {
            Admit::No
        }
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).buckets.len()
    }
}

/// One connection's inbound packet count in a fixed one-second window: two `u32`s in the read loop.
#[derive(Debug, Clone, Copy, Default)]
pub struct PacketRate {
    /// Whole seconds since the edge started (wraps after 136 years).
    window: u32,
    count: u32,
}

impl PacketRate {
    /// Count one packet at `now_secs`; false once more than `max` arrived within the current second
    /// (`max` 0 = no limit).
    pub fn allow(&mut self, now_secs: u32, max: u32) -> bool {
        if max == 0 {
            return true;
        }
        if now_secs != self.window {
            self.window = now_secs;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count <= max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_rate_is_a_token_bucket_per_address() {
        let limiter = ConnectRate::new(5);
        let t0 = Instant::now();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(limiter.admit_at(a, t0), Admit::Yes);
        }
        assert_eq!(limiter.admit_at(a, t0), Admit::No, "burst of 5 used up");
        assert_eq!(limiter.admit_at(b, t0), Admit::Yes, "another address has its own bucket");
        // 200 ms later one token has come back.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(limiter.admit_at(a, t1), Admit::Yes);
        assert_eq!(limiter.admit_at(a, t1), Admit::No);
        // Full again after a second: pruned at the next sweep.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(limiter.admit_at(b, t2), Admit::Yes);
        assert_eq!(limiter.tracked(), 1, "a's full bucket was pruned");
        assert_eq!(ConnectRate::new(0).admit_at(a, t0), Admit::Yes);
    }

    #[test]
    fn the_table_is_bounded() {
        let limiter = ConnectRate::new(1);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED_IPS as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(limiter.admit_at(ip, t0), Admit::Yes);
        }
        assert_eq!(limiter.tracked(), MAX_TRACKED_IPS);
        let extra: IpAddr = "192.168.0.1".parse().unwrap();
        assert_eq!(limiter.admit_at(extra, t0), Admit::Untracked, "every bucket is active");
        // Once they refill they are pruned and new addresses are tracked again.
        assert_eq!(limiter.admit_at(extra, t0 + Duration::from_secs(2)), Admit::Yes);
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn ipv6_is_limited_by_its_64() {
        let limiter = ConnectRate::new(1);
        let t0 = Instant::now();
        assert_eq!(limiter.admit_at("2001:db8::1".parse().unwrap(), t0), Admit::Yes);
        assert_eq!(limiter.admit_at("2001:db8::2".parse().unwrap(), t0), Admit::No);
        assert_eq!(limiter.admit_at("2001:db8:0:1::1".parse().unwrap(), t0), Admit::Yes);
        assert_ne!(ip_key("::ffff:10.0.0.1".parse().unwrap()), ip_key("2001:db8::1".parse().unwrap()));
        assert_eq!(ip_key("::ffff:10.0.0.1".parse().unwrap()), ip_key("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn packet_rate_counts_per_second() {
        let mut r = PacketRate::default();
        assert!((0..3).all(|_| r.allow(7, 3)));
        assert!(!r.allow(7, 3));
        assert!(r.allow(8, 3), "a new second starts a new count");
        assert!((0..1000).all(|_| PacketRate::default().allow(0, 0)));
    }
}
