//! `sock_diag` netlink datagrams: socket-destroy events (source::ss::destroy),
//! the successor-state reply, the TCP state dump (procinfo::tcp_states) and
//! the `iter/tcp` records (source::ebpf::states). The first byte picks one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::procinfo::tcp_states::TcpStates;
use netwatch::source::ebpf::states::tally;
use netwatch::source::ss::destroy::{decode, successor_state};

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((&which, buf)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            let d = decode(buf);
            // Every message is at least a header: never more verdicts than that.
            let messages = (buf.len() / NLMSG_HDRLEN + 1) as u64;
            assert!(d.events.len() as u64 + d.malformed + d.overruns <= messages);
        }
        1 => {
            let seq = buf
                .get(8..12)
                .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
            let _ = successor_state(buf, seq);
            let _ = successor_state(buf, seq.wrapping_add(1));
        }
        2 => {
            let seq = buf
                .get(8..12)
                .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
            let mut s = TcpStates::default();
            let _ = netwatch::fuzzing::count_tcp_state_dump(buf, seq, &mut s);
            let total =
                u64::from(s.connection_count) + u64::from(s.time_wait) + u64::from(s.close_wait);
            assert!(total <= (buf.len() / NLMSG_HDRLEN) as u64);
        }
        _ => {
            let all = tally(buf, |_, _| true);
            let none = tally(buf, |_, _| false);
            assert_eq!(none, Default::default());
            assert!((all.established + all.time_wait + all.close_wait) as usize <= buf.len() / 5);
        }
    }
});
