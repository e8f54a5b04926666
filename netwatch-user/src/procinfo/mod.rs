//! Host collectors over /proc and /sys (the `procfs` crate): interfaces,
//! TCP state counts, system, disks, host info, process metadata and the
//! socket-inode → pid table. They read; they never decide attribution.
