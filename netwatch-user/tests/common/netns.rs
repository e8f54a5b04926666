//! Network-namespace helpers shared by test files that run the agent in a
//! namespace of their own (`#[path = "common/netns.rs"] mod netns;`). Test
//! code only.

/// Bring `lo` up in the calling thread's network namespace.
pub fn loopback_up() {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo"; the
    // descriptor is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let got = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        assert_eq!(
            got,
            0,
            "SIOCGIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let set = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        assert_eq!(
            set,
            0,
            "SIOCSIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}
