//! A real load failure of the kernel collector, rendered as the agent
//! renders errors (`{:#}`, at the binary's edge): each cause appears
//! exactly once. aya's errors repeat their own causes (`EbpfError::MapError`
//! prints its `MapError` and also chains it, which chains its `io::Error`),
//! so `LoadError` renders them once in its message and chains nothing of
//! them. Needs root: it creates BPF maps (and frees them when it fails).

#[macro_use]
mod common;

use common::serial;

use netwatch::source::ebpf::tier::Tier;
use netwatch::source::ebpf::{EbpfSource, LoadOptions, TierChoice};

/// Socket maps of no entries: the kernel refuses to create the first one
/// aya creates (EINVAL), so loading the object fails before any program
/// is loaded.
#[test]
fn a_refused_map_is_reported_once() {
    require_root!("creates BPF maps");
    let _kernel = serial();
    let opts = LoadOptions {
        tier: TierChoice::Only(Tier::Tracepoint),
        max_sockets: 0,
        drain_thread: false,
        ..LoadOptions::default()
    };
    let err = match EbpfSource::load(&opts) {
        Ok(_) => panic!("a socket map of 0 entries was accepted"),
        Err(e) => e,
    };
    let rendered = format!("{:#}", anyhow::Error::from(err));
    // aya creates the maps in no fixed order: the first refused is one of
    // the four sized from `max_sockets`.
    let map = rendered
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no map named in {rendered:?}"));
    assert!(
        ["SOCKETS", "CLAIMS", "ACTIVE0", "ACTIVE1"].contains(&map),
        "{rendered}"
    );
    let os = std::io::Error::from_raw_os_error(libc::EINVAL).to_string();
    assert_eq!(
        rendered,
        format!(
            "loading the BPF object (maps, globals): map error: failed to create map `{map}`: {os}"
        )
    );
    assert_eq!(rendered.matches(&os).count(), 1, "{rendered}");
    assert_eq!(
        rendered.matches("failed to create map").count(),
        1,
        "{rendered}"
    );
}
