//! TCP stream accounting for the capture: counts each payload byte of one
//! direction of a TCP connection once, by sequence number, so segments sent
//! again (retransmissions, tail-loss probes) or captured twice (one packet
//! crossing several interfaces on `any`) are not counted again. Pure and
//! bounded: it is fed decoded segments, never reads the system, never panics.
//!
//! # The rule
//! A direction's counted bytes are how far its highest sequence number
//! advanced: a segment counts only the part of its payload past the end of
//! everything counted before. A hole (a segment not captured, or arriving
//! late) is counted when the data after it is, so a late or retransmitted copy
//! of the hole counts nothing. SYN and FIN take a sequence number but carry no
//! payload and are never counted; an RST's payload is not stream data.
//!
//! # When the rule is not trusted
//! A direction is started afresh (its segment counted in full) when it is
//! new, when a SYN with another initial sequence number reuses the 5-tuple,
//! when it was idle for [`IDLE`], or when a segment jumps more than
//! [`MAX_GAP`] past what was counted (state from another connection): each
//! resync is counted in [`Streams::resyncs`]. With [`MAX_STREAMS`] directions
//! tracked, further new ones are counted without the rule
//! ([`Streams::untracked`], reported by the source as dropped entries of
//! `pcap_tcp_streams`); ended and idle ones make room as they expire. A
//! reset never starts a direction (it carries no stream data), and a bare
//! SYN only while fewer than [`MAX_HALF_OPEN`] are tracked (counted in
//! [`Streams::refused_half_open`], reported as `pcap_half_open`), so a SYN
//! flood holds at most that many.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::Duration;

use super::frame::TcpSegment;
use super::FlowKey;

/// Directions tracked at most (7/8 of a power of two: a full map does not
/// grow its buckets; about 3.4 MB).
pub const MAX_STREAMS: usize = 28_672;
/// A bare SYN (no payload) starts a direction only while fewer than this
/// many are tracked: a half-open direction's only use is its initial
/// sequence number (a reused tuple), and its first data segment starts it
/// anyway, counted in full. So a SYN flood holds at most this many.
pub const MAX_HALF_OPEN: usize = 7_168;
/// A direction idle this long is forgotten.
///
/// Every time here is monotonic: when the capture thread read the segment
/// ([`crate::clock::mono_now`]), never libpcap's wall-clock stamp, so a
/// clock step can neither expire a live stream (whose retransmissions would
/// then count again) nor keep a dead one.
pub const IDLE: Duration = Duration::from_secs(300);
/// A direction that ended (FIN or RST) is kept this long for late copies.
pub const END_GRACE: Duration = Duration::from_secs(10);
/// A jump past the counted end larger than this (beyond the segment's own
/// length) is taken for stale state, not for a hole.
pub const MAX_GAP: u64 = 1 << 26;

#[derive(Debug, Clone, Copy)]
struct Stream {
    /// Initial sequence number, when the SYN was seen.
    isn: Option<u32>,
    /// Sequence number just past the last payload byte counted.
    next: u32,
    /// Arrival time (monotonic) of the latest segment.
    last: Duration,
    /// FIN or RST seen.
    ended: bool,
}

/// Per-direction sequence state of the TCP flows seen.
#[derive(Debug, Default)]
pub struct Streams {
    map: HashMap<FlowKey, Stream>,
    untracked: u64,
    refused_half_open: u64,
    resyncs: u64,
}

impl Streams {
    /// The payload bytes of this segment (`len` bytes from `key.src`,
    /// arrived at monotonic time `ts`) that are new to its stream.
    pub fn count(&mut self, key: FlowKey, seg: TcpSegment, len: u32, ts: Duration) -> u64 {
        let start = seg.seq.wrapping_add(u32::from(seg.syn()));
        let end = start.wrapping_add(len);
        let fresh = Stream {
            isn: seg.syn().then_some(seg.seq),
            next: start,
            last: ts,
            ended: false,
        };
        let full = self.map.len() >= MAX_STREAMS;
        let half_open_full = self.map.len() >= MAX_HALF_OPEN;
        let s = match self.map.entry(key) {
            Entry::Occupied(o) => {
                let s = o.into_mut();
                let reused = seg.syn() && s.isn != Some(seg.seq);
                if reused || ts.saturating_sub(s.last) >= IDLE {
                    *s = fresh;
                }
                s
            }
            // A reset carries no stream data: nothing to track.
            Entry::Vacant(_) if seg.rst() => return 0,
            Entry::Vacant(_) if len == 0 && half_open_full => {
                self.refused_half_open += 1;
                return 0;
            }
            Entry::Vacant(_) if full => {
                self.untracked += 1;
                return u64::from(len);
            }
            Entry::Vacant(v) => v.insert(fresh),
        };
        s.last = s.last.max(ts);
        if seg.fin() || seg.rst() {
            s.ended = true;
        }
        // An RST's payload is not stream data; a segment without payload
        // moves nothing (the ACK after a FIN sits one past the last byte).
        if seg.rst() || len == 0 {
            return 0;
        }
        let advance = end.wrapping_sub(s.next);
        // Not past the counted end (serial-number arithmetic, RFC 1982).
        if advance == 0 || advance >= 1 << 31 {
            return 0;
        }
        s.next = end;
        let advance = u64::from(advance);
        if advance > u64::from(len) + MAX_GAP {
            self.resyncs += 1;
            return u64::from(len);
        }
        advance
    }

    /// Forget directions that ended more than [`END_GRACE`] or went idle
    /// more than [`IDLE`] before monotonic time `now`.
    pub fn expire(&mut self, now: Duration) {
        self.map.retain(|_, s| {
            let age = now.saturating_sub(s.last);
            age < IDLE && !(s.ended && age >= END_GRACE)
        });
    }

    /// Directions tracked now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bare SYNs of new directions not tracked ([`MAX_HALF_OPEN`]).
    pub fn refused_half_open(&self) -> u64 {
        self.refused_half_open
    }

    /// Segments of new directions counted without the rule because the
    /// table was full.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Segments that jumped too far and restarted their direction.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Protocol;

    fn reverse(k: FlowKey) -> FlowKey {
        FlowKey {
            protocol: k.protocol,
            src: k.dst,
            dst: k.src,
        }
    }

    fn key(n: u16) -> FlowKey {
        FlowKey {
            protocol: Protocol::Tcp,
            src: ([127, 0, 0, 1], n).into(),
            dst: ([127, 0, 0, 1], 80).into(),
        }
    }

    fn seg(seq: u32, flags: u8) -> TcpSegment {
        TcpSegment { seq, flags }
    }

    const ACK: u8 = TcpSegment::ACK;
    const SYN: u8 = TcpSegment::SYN;
    const FIN: u8 = TcpSegment::FIN | TcpSegment::ACK;
    const RST: u8 = TcpSegment::RST;

    fn t(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn retransmitted_and_duplicate_segments_count_once() {
        let mut s = Streams::default();
        let k = key(1);
        assert_eq!(s.count(k, seg(1000, SYN), 0, t(0)), 0);
        assert_eq!(s.count(k, seg(1001, ACK), 100, t(0)), 100);
        // The same segment again (a retransmission, or a second copy).
        assert_eq!(s.count(k, seg(1001, ACK), 100, t(0)), 0);
        // A tail-loss probe re-sending the last 40 bytes with 60 new ones.
        assert_eq!(s.count(k, seg(1061, ACK), 100, t(0)), 60);
        // A keepalive probe (one old byte) and a zero-window probe.
        assert_eq!(s.count(k, seg(1160, ACK), 1, t(1)), 0);
        assert_eq!(s.count(k, seg(1160, ACK), 0, t(1)), 0);
        // FIN with the last 5 bytes, then the FIN retransmitted, then the
        // ACK of the peer's FIN, whose sequence number is one past ours.
        assert_eq!(s.count(k, seg(1161, FIN), 5, t(1)), 5);
        assert_eq!(s.count(k, seg(1161, FIN), 5, t(2)), 0);
        assert_eq!(s.count(k, seg(1167, ACK), 0, t(2)), 0);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn holes_count_once_whichever_copy_comes_first() {
        let mut s = Streams::default();
        let k = key(2);
        assert_eq!(s.count(k, seg(0, ACK), 10, t(0)), 10);
        // 10..20 missing; 20..30 arrives: the hole counts with it.
        assert_eq!(s.count(k, seg(20, ACK), 10, t(0)), 20);
        // The hole's late copy counts nothing.
        assert_eq!(s.count(k, seg(10, ACK), 10, t(0)), 0);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = Streams::default();
        let k = key(3);
        assert_eq!(s.count(k, seg(u32::MAX - 4, ACK), 10, t(0)), 10);
        assert_eq!(s.count(k, seg(5, ACK), 10, t(0)), 10);
        assert_eq!(s.count(k, seg(u32::MAX - 4, ACK), 20, t(0)), 0);
    }

    #[test]
    fn reused_tuples_stale_state_and_rst_restart_or_stop_counting() {
        let mut s = Streams::default();
        let k = key(4);
        s.count(k, seg(100, SYN), 0, t(0));
        assert_eq!(s.count(k, seg(101, ACK), 50, t(0)), 50);
        // A SYN with another ISN: a new connection on the same tuple.
        assert_eq!(s.count(k, seg(9, SYN), 0, t(1)), 0);
        assert_eq!(s.count(k, seg(10, ACK), 7, t(1)), 7);
        // The same SYN again is a retransmission, not a restart.
        assert_eq!(s.count(k, seg(9, SYN), 0, t(1)), 0);
        assert_eq!(s.count(k, seg(10, ACK), 7, t(1)), 0);
        // A jump far past the counted end: stale, counted as itself.
        assert_eq!(s.count(k, seg(1 << 30, ACK), 3, t(2)), 3);
        assert_eq!(s.resyncs(), 1);
        // After a long idle the state is not trusted.
        assert_eq!(s.count(k, seg(1 << 30, ACK), 3, t(2) + IDLE), 3);
        // RST payload is not stream data.
        assert_eq!(s.count(k, seg((1 << 30) + 3, RST), 8, t(400)), 0);
    }

    #[test]
    fn ended_and_idle_streams_expire_and_the_table_is_bounded() {
        let mut s = Streams::default();
        s.count(key(5), seg(0, ACK), 1, t(0));
        s.count(key(5), seg(1, FIN), 0, t(1));
        s.count(key(6), seg(0, ACK), 1, t(1));
        s.expire(t(5));
        assert_eq!(s.len(), 2);
        s.expire(t(1) + END_GRACE);
        assert_eq!(s.len(), 1, "the ended direction is gone");
        s.expire(t(1) + IDLE);
        assert!(s.is_empty(), "the idle direction is gone");

        let mut s = Streams::default();
        for i in 0..MAX_STREAMS {
            let k = FlowKey {
                protocol: Protocol::Tcp,
                src: ([10, 0, (i >> 16) as u8, (i >> 8) as u8], i as u16).into(),
                dst: ([10, 1, 0, 1], 80).into(),
            };
            s.count(k, seg(0, ACK), 1, t(0));
        }
        assert_eq!(s.len(), MAX_STREAMS);
        assert_eq!(s.count(key(7), seg(0, ACK), 9, t(0)), 9);
        assert_eq!(s.count(key(7), seg(0, ACK), 9, t(0)), 9);
        assert_eq!((s.len(), s.untracked()), (MAX_STREAMS, 2));
    }

    #[test]
    fn a_syn_flood_holds_at_most_the_half_open_cap_and_resets_start_nothing() {
        let mut s = Streams::default();
        let k = |i: usize| FlowKey {
            protocol: Protocol::Tcp,
            src: ([127, 10, (i >> 8) as u8, i as u8], 40_000).into(),
            dst: ([127, 0, 0, 1], 80).into(),
        };
        for i in 0..20_000 {
            assert_eq!(s.count(k(i), seg(7, SYN), 0, t(0)), 0);
            assert_eq!(s.count(reverse(k(i)), seg(0, RST), 0, t(0)), 0);
        }
        assert_eq!(s.len(), MAX_HALF_OPEN);
        assert_eq!(s.refused_half_open(), (20_000 - MAX_HALF_OPEN) as u64);
        // A refused direction's data still counts, in full, and from then
        // on by the rule.
        assert_eq!(s.count(k(19_999), seg(8, ACK), 100, t(1)), 100);
        assert_eq!(s.count(k(19_999), seg(8, ACK), 100, t(1)), 0);
    }
}
