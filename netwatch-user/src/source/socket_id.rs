//! The identity of one socket within one source ([`SocketId`]), and the one
//! place that knows the layout of a *shared-socket id*: the id the eBPF
//! source gives each owner's share of one kernel socket. It is built here
//! ([`SocketId::shared`]) and read back here ([`SocketId::is_shared`],
//! [`SocketId::ownerless`], [`SocketId::is_other_share_of`], ...); no other
//! code may do bit arithmetic on a shared id. It never reads the system.
//!
//! # The shared-socket layout
//!
//! One kernel socket is (`SockKey::sk`, `SockStats::first_ns`): its
//! `struct sock` address and the `bpf_ktime_get_ns()` of its map entry's
//! creation (an address reused by a new socket gets a new `first_ns`). Up to
//! `OWNERS` processes can move bytes on it; each gets its own sample, so
//! each needs its own id, and attribution must still see that the samples
//! are one socket. The id of the share of owner `tgid` (0: the socket's
//! sample without an owner) is
//!
//! ```text
//! primary   = sk                                  the socket's address
//! secondary = (first_ns ^ (tgid << 32)) | TAG     TAG = 1 << 62
//!
//! secondary bits  0..=31  first_ns bits 0..=31: the same in every share
//!                         of one socket, so shares can be told to be one
//!                         socket (with `primary`) without knowing owners
//!                 32..=61 first_ns bits 32..=61 XOR tgid bits 0..=29: tells
//!                         the owners apart; tgid 0 leaves `first_ns` as it is,
//!                         so the ownerless share's id is the socket's own
//!                 62      TAG, always set: this is a shared-socket id
//!                         (`first_ns` reaches bit 62 after 146 years of uptime)
//!                 63      first_ns bit 63 XOR tgid bit 31: 0 in practice
//! ```
//!
//! A tgid fits in the 30 bits it is given: Linux never hands out a pid
//! above `PID_MAX_LIMIT` (2^22 on 64-bit). A tgid's bit 30 would land on the
//! tag, which is set regardless, so it is lost (two tgids that differ only
//! there would share an id); bit 31 lands on bit 63.
//!
//! Why not three plain fields: the id stays the 128 bits every source's id
//! is, because a [`SocketId`] is written to the pinned-map baseline file
//! (`source::ebpf::generation`, 16 bytes per id) that a restarted agent
//! reads back; the layout is therefore fixed, and an agent of another
//! version must read the same ids. The price is that one id alone does not
//! hold its tgid: [`SocketId::tgid`] needs the socket's `first_ns`, and
//! [`SocketId::ownerless`] needs the owner's tgid (which the sample carries).
//!
//! Other sources build plain ids (a cookie, an inode, a hash; see the
//! field docs) and never call [`SocketId::shared`]: attribution merges
//! samples into one row only when both ids are shared-socket ids.

/// Identifies one socket within one source for the lifetime of the source.
/// Sources choose what goes in: the kernel `struct sock` address and its
/// creation time for eBPF (a shared-socket id, see the module doc and
/// [`SocketId::shared`]), the inode or cookie for `ss`, the 5-tuple for pcap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub primary: u64,
    pub secondary: u64,
}

/// Bit 62 of `secondary`: set in every shared-socket id (see the module doc).
const SHARED_TAG: u64 = 1 << 62;

/// The bits of `secondary` every share of one socket has in common: the low
/// half of `first_ns`.
const SOCKET_BITS: u64 = 0xffff_ffff;

/// Where the owner's tgid goes in `secondary`: XORed into the high half.
const fn owner_bits(tgid: u32) -> u64 {
    (tgid as u64) << 32
}

impl SocketId {
    /// The id of owner `tgid`'s share of the socket (`key`, `first_ns`), as
    /// the eBPF source builds it: one sample per owner, told apart by their
    /// tgid, tagged so attribution makes one connection row of the shares.
    /// `tgid` 0 is the socket's sample without an owner.
    ///
    /// ```
    /// use netwatch::source::SocketId;
    /// let id = SocketId::shared(0xffff_8880_1234_5678, 1_000_000_007, 4242);
    /// assert_eq!(id.primary, 0xffff_8880_1234_5678);
    /// assert_eq!(id.secondary, (1 << 62) | (4242 << 32) | 1_000_000_007);
    /// assert_eq!(id.ownerless(4242), Some(SocketId::shared(0xffff_8880_1234_5678, 1_000_000_007, 0)));
    /// ```
    pub const fn shared(key: u64, first_ns: u64, tgid: u32) -> Self {
        Self {
            primary: key,
            secondary: (first_ns ^ owner_bits(tgid)) | SHARED_TAG,
        }
    }

    /// The id was built by [`Self::shared`]: it is one owner's share of a
    /// socket that other samples of the same batch may share.
    pub const fn is_shared(self) -> bool {
        self.secondary & SHARED_TAG != 0
    }

    /// The kernel socket address a shared-socket id was built from (`key`
    /// of [`Self::shared`]); `None` for a plain id.
    pub const fn shared_key(self) -> Option<u64> {
        if self.is_shared() {
            Some(self.primary)
        } else {
            None
        }
    }

    /// The id of the same socket's share without an owner (tgid 0), given
    /// this share's owner `tgid`: the reverse of [`Self::shared`]'s owner
    /// step. `None` for a plain id.
    pub const fn ownerless(self, tgid: u32) -> Option<Self> {
        if !self.is_shared() {
            return None;
        }
        Some(Self {
            primary: self.primary,
            // The tag is set again: a tgid's bit 30 lands on it (see the
            // module doc), and the ownerless id is tagged like every share.
            secondary: (self.secondary ^ owner_bits(tgid)) | SHARED_TAG,
        })
    }

    /// The owner's tgid of a shared-socket id, given the socket's
    /// `first_ns` (one id alone does not hold it, see the module doc); 0 for
    /// the ownerless share, `None` for a plain id. Exact for every tgid
    /// below 2^30 (every tgid Linux hands out); bit 30 is lost to the tag.
    pub const fn tgid(self, first_ns: u64) -> Option<u32> {
        if !self.is_shared() {
            return None;
        }
        let high = (self.secondary ^ first_ns) >> 32;
        Some(high as u32 & !((SHARED_TAG >> 32) as u32))
    }

    /// `other` is another owner's share of the socket `self` is a share of:
    /// both are shared-socket ids of the same socket address and the same
    /// low half of `first_ns`, and they differ (their owners do).
    pub fn is_other_share_of(self, other: Self) -> bool {
        self.is_shared()
            && other.is_shared()
            && self.primary == other.primary
            && self != other
            && (self.secondary ^ other.secondary) & SOCKET_BITS == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SK: u64 = 0xffff_8880_0abc_d000;
    /// A `first_ns` with bits set in both halves: 2^32 + 7.
    const NS: u64 = (1 << 32) | 7;

    #[test]
    fn the_ownerless_share_is_the_socket_itself_with_the_tag() {
        let id = SocketId::shared(SK, NS, 0);
        assert_eq!(id.primary, SK);
        assert_eq!(id.secondary, 0x4000_0001_0000_0007);
        assert!(id.is_shared());
        assert_eq!(id.shared_key(), Some(SK));
        assert_eq!(id.tgid(NS), Some(0));
        assert_eq!(id.ownerless(0), Some(id));
    }

    #[test]
    fn an_owner_is_xored_into_the_high_half() {
        // tgid 3 flips bits 32 and 33 of first_ns: bit 32 was set, 33 not.
        let id = SocketId::shared(SK, NS, 3);
        assert_eq!(id.secondary, 0x4000_0002_0000_0007);
        assert_eq!(id.tgid(NS), Some(3));
        assert_eq!(id.ownerless(3), Some(SocketId::shared(SK, NS, 0)));
        // Undone with another tgid, it is some other id, not the socket's.
        assert_eq!(
            id.ownerless(2).map(|o| o.secondary),
            Some(0x4000_0000_0000_0007)
        );
    }

    #[test]
    fn the_largest_tgid_linux_hands_out_fits_below_the_tag() {
        // PID_MAX_LIMIT on 64-bit is 2^22: pids run up to 2^22 - 1.
        let max = (1u32 << 22) - 1;
        let id = SocketId::shared(SK, 7, max);
        assert_eq!(id.secondary, 0x4000_0000_0000_0007 | (u64::from(max) << 32));
        assert_eq!(id.secondary, 0x403f_ffff_0000_0007);
        assert_eq!(id.tgid(7), Some(max));
        assert_eq!(id.ownerless(max), Some(SocketId::shared(SK, 7, 0)));
    }

    #[test]
    fn a_u32_max_tgid_loses_bit_30_to_the_tag_and_still_round_trips() {
        let id = SocketId::shared(SK, 7, u32::MAX);
        // Bits 32..=63 all set: bit 62 by the tag and by the tgid at once.
        assert_eq!(id.secondary, 0xffff_ffff_0000_0007);
        assert_eq!(id.tgid(7), Some(0xbfff_ffff));
        // The tgid with bit 30 clear has the very same id.
        assert_eq!(SocketId::shared(SK, 7, 0xbfff_ffff), id);
        // The ownerless share is still the socket's own id, tag set.
        assert_eq!(id.ownerless(u32::MAX), Some(SocketId::shared(SK, 7, 0)));
        assert_eq!(SocketId::shared(SK, 7, 0).secondary, 0x4000_0000_0000_0007);
    }

    #[test]
    fn the_tag_bit_alone_decides_what_is_shared() {
        let tag_only = SocketId {
            primary: 1,
            secondary: 1 << 62,
        };
        assert!(tag_only.is_shared());
        assert_eq!(tag_only, SocketId::shared(1, 0, 0));
        // Bit 63 (ss's tuple ids set it) is not the tag.
        let bit63 = SocketId {
            primary: 1,
            secondary: 1 << 63,
        };
        assert!(!bit63.is_shared());
        // A first_ns already holding bit 62 gives the same id as without.
        assert_eq!(
            SocketId::shared(SK, (1 << 62) | 7, 5),
            SocketId::shared(SK, 7, 5)
        );
    }

    #[test]
    fn a_plain_id_reads_as_no_share() {
        // As ss (cookie), macOS (pid) and pcap (inode) build them.
        for secondary in [0, 4242, (1 << 63) | 12345] {
            let id = SocketId {
                primary: SK,
                secondary,
            };
            assert!(!id.is_shared(), "{secondary:#x}");
            assert_eq!(id.shared_key(), None);
            assert_eq!(id.ownerless(7), None);
            assert_eq!(id.tgid(0), None);
            assert!(!id.is_other_share_of(id));
        }
        // A plain id and a share of the same address are not one socket,
        // even with the same low bits.
        let plain = SocketId {
            primary: SK,
            secondary: 7,
        };
        let share = SocketId::shared(SK, 7, 9);
        assert!(!plain.is_other_share_of(share));
        assert!(!share.is_other_share_of(plain));
    }

    #[test]
    fn shares_of_one_socket_are_told_apart_from_other_sockets() {
        let a = SocketId::shared(SK, NS, 10);
        let b = SocketId::shared(SK, NS, 11);
        let ownerless = SocketId::shared(SK, NS, 0);
        assert!(a.is_other_share_of(b) && b.is_other_share_of(a));
        assert!(a.is_other_share_of(ownerless));
        // The same share is not another one.
        assert!(!a.is_other_share_of(a));
        // Another address, or the address reused by a socket created at
        // another time (low half of first_ns differs): another socket.
        assert!(!a.is_other_share_of(SocketId::shared(SK + 64, NS, 11)));
        assert!(!a.is_other_share_of(SocketId::shared(SK, NS + 1, 11)));
    }

    proptest::proptest! {
        #[test]
        fn every_share_reads_back_its_socket_and_owner(
            key: u64,
            first_ns in 0u64..(1 << 62),
            tgid in 0u32..(1 << 30),
            other in 0u32..(1 << 30),
        ) {
            let id = SocketId::shared(key, first_ns, tgid);
            proptest::prop_assert!(id.is_shared());
            proptest::prop_assert_eq!(id.shared_key(), Some(key));
            proptest::prop_assert_eq!(id.tgid(first_ns), Some(tgid));
            proptest::prop_assert_eq!(id.secondary & SOCKET_BITS, first_ns & SOCKET_BITS);
            let socket = SocketId::shared(key, first_ns, 0);
            proptest::prop_assert_eq!(socket.secondary, first_ns | SHARED_TAG);
            proptest::prop_assert_eq!(id.ownerless(tgid), Some(socket));
            let share = SocketId::shared(key, first_ns, other);
            proptest::prop_assert_eq!(id.is_other_share_of(share), tgid != other);
            proptest::prop_assert_eq!(share == id, tgid == other);
        }

        #[test]
        fn any_tgid_undoes_to_the_ownerless_share(key: u64, first_ns: u64, tgid: u32) {
            let id = SocketId::shared(key, first_ns, tgid);
            proptest::prop_assert_eq!(id.ownerless(tgid), Some(SocketId::shared(key, first_ns, 0)));
            proptest::prop_assert_eq!(id.tgid(first_ns), Some(tgid & !(1 << 30)));
        }
    }
}
