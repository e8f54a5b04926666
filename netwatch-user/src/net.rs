//! The vocabulary every layer shares about sockets: the transport
//! [`Protocol`] and the wire names of socket states, with the one table that
//! maps the kernel's TCP state numbers (`include/net/tcp_states.h`) and each
//! tool's spelling (`ss`, BSD `netstat`/`lsof`/`nettop`) to them. It sits
//! below `source`, `procinfo` and `attribution` (with the interface
//! counters both platforms' readers produce): it must never import from
//! them, and it never reads the system.
//!
//! Spellings follow netwatch-sdk 0.3.2, which passes each platform's tool
//! through: on Linux `ss`, whose `ESTAB` the SDK turns into `ESTABLISHED`
//! and which names the kernel's `TCP_CLOSE` `UNCONN`; on macOS `lsof`, which
//! says `CLOSED`. So a live socket in `TCP_CLOSE` is [`state::UNCONN`], and a
//! socket that is gone (a source's final record of it) is [`state::CLOSED`],
//! on every source.

pub mod sock_diag;

/// One network interface's cumulative counters at one instant, as each
/// platform's reader gives them (`/sys/class/net` on Linux, `netstat -ibn`
/// on macOS); the host collectors turn two readings into the wire's
/// `InterfaceMetric` (deltas, rates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// The interface's name.
    pub name: String,
    /// Administratively up.
    pub is_up: bool,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Received packets dropped (0 where the platform does not say).
    pub rx_drops: u64,
    /// Sent packets dropped (0 where the platform does not say).
    pub tx_drops: u64,
}

/// Transport protocol of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The wire spelling (`TCP`, `UDP`).
    pub fn as_wire(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// The normalized state names a `ConnectionDetail.state` can carry.
pub mod state {
    pub const ESTABLISHED: &str = "ESTABLISHED";
    pub const SYN_SENT: &str = "SYN_SENT";
    pub const SYN_RECV: &str = "SYN_RECV";
    pub const FIN_WAIT1: &str = "FIN_WAIT1";
    pub const FIN_WAIT2: &str = "FIN_WAIT2";
    pub const TIME_WAIT: &str = "TIME_WAIT";
    pub const CLOSE_WAIT: &str = "CLOSE_WAIT";
    pub const LAST_ACK: &str = "LAST_ACK";
    pub const LISTEN: &str = "LISTEN";
    pub const CLOSING: &str = "CLOSING";
    pub const NEW_SYN_RECV: &str = "NEW_SYN_RECV";
    /// Not connected: a UDP socket without a peer, a TCP socket in the
    /// kernel's `TCP_CLOSE` that is still open (as `ss` says).
    pub const UNCONN: &str = "UNCONN";
    /// The socket is gone: the state of a source's final record of it.
    pub const CLOSED: &str = "CLOSED";
    /// A TCP state a tool did not print or that no table knows.
    pub const UNKNOWN: &str = "UNKNOWN";
}

/// The one table: kernel TCP state number, `ss` spelling, wire name.
/// `ss` prints `NEW_SYN_RECV` request sockets as `SYN-RECV`, so it has no
/// spelling of its own.
const TCP_STATES: [(u8, Option<&str>, &str); 12] = [
    (1, Some("ESTAB"), state::ESTABLISHED),
    (2, Some("SYN-SENT"), state::SYN_SENT),
    (3, Some("SYN-RECV"), state::SYN_RECV),
    (4, Some("FIN-WAIT-1"), state::FIN_WAIT1),
    (5, Some("FIN-WAIT-2"), state::FIN_WAIT2),
    (6, Some("TIME-WAIT"), state::TIME_WAIT),
    (7, Some("UNCONN"), state::UNCONN),
    (8, Some("CLOSE-WAIT"), state::CLOSE_WAIT),
    (9, Some("LAST-ACK"), state::LAST_ACK),
    (10, Some("LISTEN"), state::LISTEN),
    (11, Some("CLOSING"), state::CLOSING),
    (12, None, state::NEW_SYN_RECV),
];

/// The wire name of a kernel TCP state number (`TCP_ESTABLISHED` = 1 …
/// `TCP_NEW_SYN_RECV` = 12); `TCP_CLOSE` is [`state::UNCONN`]. `None` for
/// numbers the kernel does not define.
///
/// ```
/// use netwatch::net::tcp_state_name;
/// assert_eq!(tcp_state_name(1), Some("ESTABLISHED"));
/// assert_eq!(tcp_state_name(7), Some("UNCONN"));
/// assert_eq!(tcp_state_name(0), None);
/// ```
pub fn tcp_state_name(kernel_state: u8) -> Option<&'static str> {
    TCP_STATES
        .iter()
        .find(|(n, _, _)| *n == kernel_state)
        .map(|(_, _, name)| *name)
}

/// The wire name of a state as `ss` prints it (`ESTAB`, `FIN-WAIT-1`,
/// `UNCONN`, …); `None` for text `ss` does not print as a state.
pub fn state_from_ss(ss_state: &str) -> Option<&'static str> {
    TCP_STATES
        .iter()
        .find(|(_, ss, _)| *ss == Some(ss_state))
        .map(|(_, _, name)| *name)
}

/// The wire name of a TCP state in any tool's spelling, case, `_`, `-` and
/// spaces ignored: the wire names themselves, `ss`'s (`ESTAB`), and the BSD
/// ones of `netstat`/`lsof`/`nettop` (`Established`, `CloseWait`,
/// `SYN_RCVD`, `SynReceived`, `FinWait1`, `CLOSED`). BSD's `CLOSED` is a
/// socket in the closed state: [`state::CLOSED`], as `lsof` (and so the SDK
/// on macOS) says.
///
/// ```
/// use netwatch::net::normalize_tcp_state;
/// assert_eq!(normalize_tcp_state("CloseWait"), Some("CLOSE_WAIT"));
/// assert_eq!(normalize_tcp_state("FIN-WAIT-1"), Some("FIN_WAIT1"));
/// assert_eq!(normalize_tcp_state("BE"), None);
/// ```
pub fn normalize_tcp_state(raw: &str) -> Option<&'static str> {
    let mut key = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            key.push(c.to_ascii_uppercase());
        } else if !matches!(c, '_' | '-' | ' ') {
            return None;
        }
    }
    let squash = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
    };
    match key.as_str() {
        "" => return None,
        "SYNRECEIVED" | "SYNRCVD" => return Some(state::SYN_RECV),
        "CLOSED" | "CLOSE" => return Some(state::CLOSED),
        _ => {}
    }
    TCP_STATES
        .iter()
        // UNCONN is not a TCP state any tool prints for TCP.
        .filter(|(_, _, name)| *name != state::UNCONN)
        .find(|(_, ss, name)| squash(name) == key || ss.is_some_and(|s| squash(s) == key))
        .map(|(_, _, name)| *name)
}

/// The state of a UDP socket, which has no TCP state: `ESTABLISHED` when
/// connected (as `ss` says for a connected UDP socket), `UNCONN` otherwise.
pub fn udp_state(connected: bool) -> &'static str {
    if connected {
        state::ESTABLISHED
    } else {
        state::UNCONN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_numbers_follow_tcp_states_h() {
        let names: Vec<_> = (0..=13).map(tcp_state_name).collect();
        assert_eq!(
            names,
            [
                None,
                Some("ESTABLISHED"),
                Some("SYN_SENT"),
                Some("SYN_RECV"),
                Some("FIN_WAIT1"),
                Some("FIN_WAIT2"),
                Some("TIME_WAIT"),
                Some("UNCONN"),
                Some("CLOSE_WAIT"),
                Some("LAST_ACK"),
                Some("LISTEN"),
                Some("CLOSING"),
                Some("NEW_SYN_RECV"),
                None,
            ]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn procfs_numbers_agree_with_the_table() {
        for n in 1..=12u8 {
            let s = procfs::net::TcpState::from_u8(n).map(|s| s.to_u8());
            assert_eq!(s, Some(n));
        }
    }

    #[test]
    fn ss_spellings() {
        for (ss, wire) in [
            ("ESTAB", "ESTABLISHED"),
            ("SYN-SENT", "SYN_SENT"),
            ("SYN-RECV", "SYN_RECV"),
            ("FIN-WAIT-1", "FIN_WAIT1"),
            ("FIN-WAIT-2", "FIN_WAIT2"),
            ("TIME-WAIT", "TIME_WAIT"),
            ("UNCONN", "UNCONN"),
            ("CLOSE-WAIT", "CLOSE_WAIT"),
            ("LAST-ACK", "LAST_ACK"),
            ("LISTEN", "LISTEN"),
            ("CLOSING", "CLOSING"),
        ] {
            assert_eq!(state_from_ss(ss), Some(wire), "{ss}");
        }
        for not in ["ESTABLISHED", "estab", "users:", "", "NEW_SYN_RECV"] {
            assert_eq!(state_from_ss(not), None, "{not}");
        }
    }

    #[test]
    fn any_tool_spelling() {
        for (raw, wire) in [
            ("ESTABLISHED", "ESTABLISHED"),
            ("Established", "ESTABLISHED"),
            ("ESTAB", "ESTABLISHED"),
            ("CloseWait", "CLOSE_WAIT"),
            ("CLOSE_WAIT", "CLOSE_WAIT"),
            ("SYN_RCVD", "SYN_RECV"),
            ("SynReceived", "SYN_RECV"),
            ("SYN_SENT", "SYN_SENT"),
            ("FIN_WAIT_1", "FIN_WAIT1"),
            ("FinWait2", "FIN_WAIT2"),
            ("TimeWait", "TIME_WAIT"),
            ("Closed", "CLOSED"),
            ("CLOSE", "CLOSED"),
            ("Listen", "LISTEN"),
            ("LAST_ACK", "LAST_ACK"),
            ("Closing", "CLOSING"),
        ] {
            assert_eq!(normalize_tcp_state(raw), Some(wire), "{raw}");
        }
        for not in ["", "BE", "ESTABLISHED!", "UNCONN", "--", "Idle"] {
            assert_eq!(normalize_tcp_state(not), None, "{not}");
        }
    }

    #[test]
    fn every_wire_name_is_a_fixed_point() {
        for (_, _, name) in TCP_STATES {
            if name != state::UNCONN {
                assert_eq!(normalize_tcp_state(name), Some(name));
            }
        }
        assert_eq!(normalize_tcp_state(state::CLOSED), Some(state::CLOSED));
    }

    #[test]
    fn udp_states() {
        assert_eq!(udp_state(true), "ESTABLISHED");
        assert_eq!(udp_state(false), "UNCONN");
    }

    #[test]
    fn protocol_wire_names() {
        assert_eq!(Protocol::Tcp.as_wire(), "TCP");
        assert_eq!(Protocol::Udp.as_wire(), "UDP");
    }

    proptest::proptest! {
        #[test]
        fn prop_normalizers_never_panic(s in ".{0,40}") {
            let _ = normalize_tcp_state(&s);
            let _ = state_from_ss(&s);
        }
    }
}
