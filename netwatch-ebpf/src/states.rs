//! TCP state counts for the snapshot (`connection_count`, TIME_WAIT,
//! CLOSE_WAIT): an `iter/tcp` program userspace runs once per read, which
//! writes 5 bytes per socket of the agent's network namespace (full,
//! time-wait and request sockets alike): the state (a time-wait socket's
//! substate, as `sock_diag` reports it), the local port (host
//! order) and the remote port (network order). Userspace counts them; this
//! is `sock_diag`'s dump without building a netlink message per socket. It
//! never touches a map.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;

use crate::{seed::TCP_TIME_WAIT, sk};

/// Called for each TCP socket (`struct bpf_iter__tcp { meta, sk_common, uid }`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn iter_tcp_states(ctx: *mut c_void) -> i32 {
    // SAFETY: `ctx` is the kernel's `bpf_iter__tcp`; the socket pointer is
    // null-checked and read with bpf_probe_read_kernel.
    unsafe {
        let Some((meta, sk)) = crate::seed::iter_sock(ctx) else {
            return 0;
        };
        let Ok(head) = sk::head(sk) else {
            return 0;
        };
        let mut state = sk::state(sk).unwrap_or(0);
        // A time-wait socket reports its substate (FIN_WAIT2 for an
        // orphan waiting for its peer's FIN), as `sock_diag` does.
        if state == TCP_TIME_WAIT {
            if let Some(sub) = sk::tw_substate(sk) {
                state = sub;
            }
        }
        // The local port as the kernel keeps it (host order), the remote
        // one as on the wire (network order).
        let rec: [u8; 5] = [
            state,
            head.num[0],
            head.num[1],
            head.dport[0],
            head.dport[1],
        ];
        // `meta->seq` is the first field of `struct bpf_iter_meta`.
        let seq = core::ptr::read(meta as *const *mut c_void);
        bpf_seq_write(seq.cast(), rec.as_ptr() as *const c_void, 5);
    }
    0
}
