//! Every bpf(2) call this crate makes itself (aya makes the others): the
//! one wrapper of the syscall, the `union bpf_attr` members it fills, and
//! a function per command, each saying what its errno values mean. The
//! batch reads share one loop ([`batch_loop`]) whose retry rules are
//! tested without a kernel.
//!
//! It must never decide what an entry means, never keep state between
//! calls, and never hand out a pointer the kernel could write through
//! after a call returns: every attr points at buffers borrowed for the
//! call only.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `enum bpf_cmd` values used here (include/uapi/linux/bpf.h).
mod cmd {
    pub const MAP_CREATE: libc::c_long = 0;
    pub const MAP_LOOKUP_ELEM: libc::c_long = 1;
    pub const OBJ_PIN: libc::c_long = 6;
    pub const OBJ_GET: libc::c_long = 7;
    pub const PROG_GET_NEXT_ID: libc::c_long = 11;
    pub const PROG_GET_FD_BY_ID: libc::c_long = 13;
    pub const OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    pub const MAP_LOOKUP_BATCH: libc::c_long = 24;
    pub const MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;
    pub const LINK_GET_FD_BY_ID: libc::c_long = 30;
    pub const LINK_GET_NEXT_ID: libc::c_long = 31;
}

/// bpf(2) command `cmd` with `attr`, the `union bpf_attr` member of that
/// command's layout (its pointers set to live buffers of the sizes the
/// command reads or writes); the syscall's return value (an fd for the
/// commands that make one), or the errno.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) with an attr of the command's layout, whose pointers
    // the caller made point at live buffers of the sizes the command uses.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A descriptor the kernel just returned (`ret` of a command that makes one).
fn new_fd(ret: libc::c_long, what: &str) -> io::Result<OwnedFd> {
    let fd = i32::try_from(ret).map_err(|_| io::Error::other(format!("{what} returned no fd")))?;
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The element member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `obj` member of `union bpf_attr` (`BPF_OBJ_PIN`, `BPF_OBJ_GET`).
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `BPF_MAP_CREATE` part of `union bpf_attr` up to `map_name`.
#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// The `*_GET_NEXT_ID` / `*_GET_FD_BY_ID` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct IdAttr {
    /// `start_id` / `prog_id` / `link_id`.
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Which batch command a [`batch_read`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// `BPF_MAP_LOOKUP_BATCH`: copy entries out, leave them in the map.
    Lookup,
    /// `BPF_MAP_LOOKUP_AND_DELETE_BATCH`: copy entries out and delete them.
    LookupAndDelete,
}

/// A batch that grew this big and still met a bucket too large for it
/// gives up (the ENOSPC is returned): 2^20 keys is far beyond any bucket.
pub const MAX_BATCH: usize = 1 << 20;

/// What one batch call did: its error (`None`: success), how many entries
/// it wrote into the buffers, and the cursor to continue from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub errno: Option<i32>,
    pub count: usize,
    pub next: u32,
}

/// The loop every batch read runs, with `call(cursor, keys, values)`
/// doing one batch call (`cursor` `None` for the first: start at the map's
/// beginning). `keys` and `values` are the buffers, of equal length (at
/// least 1; their length is the batch size, kept for the next read). Per
/// the errno of a call:
///
/// - none: `count` entries read, more may follow from `next`;
/// - `ENOENT`: `count` entries read (maybe 0) and the map is done;
/// - `ENOSPC`: one hash bucket holds more entries than the batch size and
///   nothing was read: the buffers grow 4 times and the same cursor is
///   tried again (up to [`MAX_BATCH`], then the error is returned);
/// - any other (`EINVAL`: a kernel without the command, < 5.6 for hash
///   maps; `ENOTSUPP`: a map type without batches; `EFAULT`): returned,
///   with the entries of earlier calls already handed to `each`.
///
/// Each call's entries go to `each` before the next call.
pub fn batch_loop<K: Copy, V: Copy>(
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
    mut call: impl FnMut(Option<u32>, &mut [K], &mut [V]) -> Step,
    mut each: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    if keys.is_empty() || values.len() != keys.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "batch buffers of {} keys and {} values: they must be of one length, at least 1",
                keys.len(),
                values.len()
            ),
        ));
    }
    let mut cursor = None;
    loop {
        let chunk = keys.len();
        let step = call(cursor, keys, values);
        let n = step.count.min(chunk);
        match step.errno {
            Some(libc::ENOSPC) if chunk < MAX_BATCH => {
                let (k, v) = (keys[0], values[0]);
                keys.resize(chunk * 4, k);
                values.resize(chunk * 4, v);
                continue;
            }
            None | Some(libc::ENOENT) => {}
            Some(e) => return Err(io::Error::from_raw_os_error(e)),
        }
        each(&keys[..n], &values[..n]);
        if step.errno.is_some() {
            return Ok(());
        }
        cursor = Some(step.next);
    }
}

/// Every entry of the hash map `fd` (keys `K`, values `V`, the map's
/// sizes), bucket by bucket, by `op`, handed to `each` a batch at a time
/// ([`batch_loop`] says what each errno does; the batch size is the
/// buffers' length and grows there). A hash map's cursor is a bucket
/// index: entries inserted or deleted meanwhile never restart or skip it.
pub fn batch_read<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    op: Batch,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
    each: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    let command = match op {
        Batch::Lookup => cmd::MAP_LOOKUP_BATCH,
        Batch::LookupAndDelete => cmd::MAP_LOOKUP_AND_DELETE_BATCH,
    };
    let map_fd = fd.as_raw_fd() as u32;
    let call = |cursor: Option<u32>, keys: &mut [K], values: &mut [V]| {
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: cursor.as_ref().map_or(0, |c| c as *const u32 as u64),
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: keys.len().min(values.len()) as u32,
            map_fd,
            ..BatchAttr::default()
        };
        let errno = bpf(command, &mut attr)
            .err()
            .map(|e| e.raw_os_error().unwrap_or(0));
        Step {
            errno,
            count: attr.count as usize,
            next,
        }
    };
    batch_loop(keys, values, call, each)
}

/// `BPF_MAP_LOOKUP_ELEM`: the entry of `key` into `value`; false if the
/// map has none (`ENOENT`). Any other errno is returned.
pub fn lookup_elem<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    key: &K,
    value: &mut V,
) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *mut V as u64,
        ..ElemAttr::default()
    };
    match bpf(cmd::MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: a path with a NUL byte", path.display()),
        )
    })
}

/// `BPF_OBJ_GET`: open the BPF object (map, link or program) pinned at
/// `path` (`ENOENT`: nothing pinned there; `EACCES`/`EPERM`: no right).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..ObjAttr::default()
    };
    new_fd(bpf(cmd::OBJ_GET, &mut attr)?, "BPF_OBJ_GET")
}

/// `BPF_OBJ_PIN`: pin the BPF object behind `fd` at `path` (the parent
/// must exist on a BPF filesystem; `EEXIST`: `path` exists and is never
/// replaced; `EPERM`: not a BPF filesystem).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..ObjAttr::default()
    };
    bpf(cmd::OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_MAP_TYPE_ARRAY`.
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// `BPF_MAP_CREATE` of an array of `max_entries` values of `value_size`
/// bytes (keys are u32), named `name` in the kernel (at most 15 bytes;
/// longer is cut). `EPERM`: no `CAP_BPF`; `ENOMEM`: over the memlock limit.
pub fn create_array(name: &[u8], value_size: u32, max_entries: u32) -> io::Result<OwnedFd> {
    let mut attr = CreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size,
        max_entries,
        ..CreateAttr::default()
    };
    let len = name.len().min(attr.map_name.len() - 1);
    attr.map_name[..len].copy_from_slice(&name[..len]);
    new_fd(bpf(cmd::MAP_CREATE, &mut attr)?, "BPF_MAP_CREATE")
}

/// The kind of object an id walk ([`next_id`], [`fd_by_id`]) goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Prog,
    Link,
}

/// `BPF_PROG_GET_NEXT_ID` / `BPF_LINK_GET_NEXT_ID`: the id after `id`;
/// `None` at the end (`ENOENT`). `EPERM`: needs `CAP_SYS_ADMIN`.
pub fn next_id(kind: Object, id: u32) -> io::Result<Option<u32>> {
    let command = match kind {
        Object::Prog => cmd::PROG_GET_NEXT_ID,
        Object::Link => cmd::LINK_GET_NEXT_ID,
    };
    let mut attr = IdAttr {
        id,
        ..Default::default()
    };
    match bpf(command, &mut attr) {
        Ok(_) => Ok(Some(attr.next_id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `BPF_PROG_GET_FD_BY_ID` / `BPF_LINK_GET_FD_BY_ID`: a descriptor for the
/// object `id`; `None` if it went away meanwhile (`ENOENT`).
pub fn fd_by_id(kind: Object, id: u32) -> io::Result<Option<OwnedFd>> {
    let command = match kind {
        Object::Prog => cmd::PROG_GET_FD_BY_ID,
        Object::Link => cmd::LINK_GET_FD_BY_ID,
    };
    let mut attr = IdAttr {
        id,
        ..Default::default()
    };
    match bpf(command, &mut attr) {
        Ok(fd) => new_fd(fd, "BPF_*_GET_FD_BY_ID").map(Some),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info`, a `struct bpf_*_info` prefix: the
/// kernel fills what fits in its size and leaves out what it lacks.
pub fn obj_info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<T>() as u32,
        info: info as *mut T as u64,
    };
    bpf(cmd::OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake batch command over `entries` (one bucket per inner vec, as
    /// a hash map's cursor is a bucket index), recording each call's
    /// (cursor, batch size), and failing the calls `fail` lists.
    fn fake<'a>(
        buckets: &'a [Vec<u32>],
        calls: &'a mut Vec<(Option<u32>, usize)>,
        fail: &'a [(usize, i32)],
    ) -> impl FnMut(Option<u32>, &mut [u32], &mut [u64]) -> Step + 'a {
        move |cursor, keys, values| {
            calls.push((cursor, keys.len()));
            if let Some(&(_, e)) = fail.iter().find(|(i, _)| *i == calls.len() - 1) {
                return Step {
                    errno: Some(e),
                    count: 0,
                    next: 0,
                };
            }
            let mut b = cursor.unwrap_or(0) as usize;
            let mut n = 0;
            while b < buckets.len() {
                if n + buckets[b].len() > keys.len() {
                    if n == 0 {
                        return Step {
                            errno: Some(libc::ENOSPC),
                            count: 0,
                            next: 0,
                        };
                    }
                    break;
                }
                for &k in &buckets[b] {
                    keys[n] = k;
                    values[n] = u64::from(k) * 10;
                    n += 1;
                }
                b += 1;
            }
            Step {
                errno: (b == buckets.len()).then_some(libc::ENOENT),
                count: n,
                next: b as u32,
            }
        }
    }

    /// A fake read's result, the entries it handed over, its calls
    /// (cursor, batch size) and the batch size it left.
    type Run = (
        io::Result<()>,
        Vec<(u32, u64)>,
        Vec<(Option<u32>, usize)>,
        usize,
    );

    fn run(buckets: &[Vec<u32>], size: usize, fail: &[(usize, i32)]) -> Run {
        let mut calls = Vec::new();
        let mut seen = Vec::new();
        let (mut keys, mut values) = (vec![0u32; size], vec![0u64; size]);
        let r = batch_loop(
            &mut keys,
            &mut values,
            fake(buckets, &mut calls, fail),
            |k, v| seen.extend(k.iter().copied().zip(v.iter().copied())),
        );
        (r, seen, calls, keys.len())
    }

    #[test]
    fn batches_follow_the_cursor_to_enoent() {
        let buckets = vec![vec![1, 2], vec![3], vec![], vec![4, 5]];
        let (r, seen, calls, size) = run(&buckets, 3, &[]);
        r.unwrap();
        assert_eq!(seen, [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50)]);
        // Buckets 0-2 (3 keys), then 3 (2 keys) with ENOENT.
        assert_eq!(calls, [(None, 3), (Some(3), 3)]);
        assert_eq!(size, 3);
    }

    #[test]
    fn a_bucket_bigger_than_the_batch_grows_it_and_retries_the_same_cursor() {
        let buckets = vec![vec![1], (10..16).collect(), vec![2]];
        let (r, seen, calls, size) = run(&buckets, 2, &[]);
        r.unwrap();
        assert_eq!(
            seen.iter().map(|e| e.0).collect::<Vec<_>>(),
            [1, 10, 11, 12, 13, 14, 15, 2]
        );
        // 1 read; bucket 1 (6 keys) refuses 2, then fits 8 (and bucket 2 too).
        assert_eq!(calls, [(None, 2), (Some(1), 2), (Some(1), 8)]);
        // The grown size is kept for the next read.
        assert_eq!(size, 8);
    }

    #[test]
    fn another_errno_stops_the_read_with_what_came_before_handed_over() {
        let buckets = vec![vec![1], vec![2], vec![3]];
        let (r, seen, calls, _) = run(&buckets, 1, &[(1, libc::EINVAL)]);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINVAL));
        assert_eq!(seen, [(1, 10)]);
        assert_eq!(calls, [(None, 1), (Some(1), 1)]);
    }

    #[test]
    fn enospc_past_the_largest_batch_is_an_error() {
        let (r, seen, calls, _) = run(&[vec![1]], MAX_BATCH, &[(0, libc::ENOSPC)]);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!((seen.len(), calls.len()), (0, 1));
    }

    #[test]
    fn an_empty_map_is_one_call() {
        let (r, seen, calls, _) = run(&[], 4, &[]);
        r.unwrap();
        assert_eq!((seen.len(), calls), (0, vec![(None, 4)]));
    }

    #[test]
    fn buffers_of_no_length_are_refused_not_called() {
        let (r, _, calls, _) = run(&[vec![1]], 0, &[]);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        assert!(calls.is_empty());
    }
}
