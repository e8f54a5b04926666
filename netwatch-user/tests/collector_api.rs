//! The library's front door refuses what the agent refuses: a pin
//! directory an embedder names is checked before anything is loaded or
//! removed (the bpffs root, where other software's pins live, is refused),
//! and the error says which setting and why, each cause once.

#[macro_use]
mod common;

use common::serial;

#[test]
fn a_pin_directory_at_the_bpffs_root_is_refused_before_loading() {
    require_root!("would load BPF programs if the check let it through");
    let _kernel = serial();
    let state = std::env::temp_dir().join(format!("nw-collector-api-{}", std::process::id()));
    let err = match netwatch::Collector::builder()
        .mode(netwatch::Mode::Ebpf)
        .dns_capture(false)
        .pin("/sys/fs/bpf", state.join("baseline"))
        .build()
    {
        Ok(_) => panic!("the bpffs root was accepted as a pin directory"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            netwatch::Error::Refused {
                what: "pin directory",
                ..
            }
        ),
        "{err:?}"
    );
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(shown.starts_with("refused the pin directory: "), "{shown}");
    // The cause, once (it is the error's source, not repeated in it).
    assert_eq!(
        shown.matches("is the root of a mounted filesystem").count(),
        1,
        "{shown}"
    );
    assert!(!state.exists(), "nothing was created for a refused setting");
}
