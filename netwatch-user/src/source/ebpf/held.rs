//! The pinned objects this agent holds open while it runs: a file
//! descriptor for every map, link and program under its pin set, so that
//! removing the pin files (`rm -r /sys/fs/bpf/netwatch/*` while the agent
//! runs) detaches nothing, and the pins can be made again from the held
//! descriptors. Checked once per read (one `lstat` per object); missing
//! pins are pinned again, logged and counted.
//!
//! It must never pin anything outside its own set directory, never replace
//! an entry that exists, and never close a descriptor while the agent runs
//! (closing the last one of a link detaches its program).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use log::{info, warn};

pub use super::sys::{obj_get, obj_pin};

/// Every object of one pin set, held open, by its pin's path (joined
/// once here, not on every check).
pub struct Held {
    root: PathBuf,
    objects: Vec<(PathBuf, OwnedFd)>,
    /// Objects pinned again since start.
    restored: u64,
    /// A failed restore was logged (logged again only after a success).
    failing: bool,
}

impl Held {
    /// Open every object pinned under `root` (recursively).
    pub fn open(root: &Path) -> io::Result<Self> {
        let mut objects = Vec::new();
        let mut dirs = vec![PathBuf::new()];
        while let Some(rel) = dirs.pop() {
            let dir = root.join(&rel);
            for entry in std::fs::read_dir(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?
            {
                let entry = entry?;
                let rel = rel.join(entry.file_name());
                if entry.file_type()?.is_dir() {
                    dirs.push(rel);
                } else {
                    let path = root.join(&rel);
                    let fd = obj_get(&path).map_err(|e| {
                        io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
                    })?;
                    objects.push((path, fd));
                }
            }
        }
        objects.sort_by(|a, b| a.0.cmp(&b.0));
        log::debug!(
            "holding {} pinned objects of {} open",
            objects.len(),
            root.display()
        );
        Ok(Self {
            root: root.to_path_buf(),
            objects,
            restored: 0,
            failing: false,
        })
    }

    /// The set's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Objects pinned again since start (their pins had been removed).
    pub fn restored(&self) -> u64 {
        self.restored
    }

    /// Pin again every object whose pin is gone; returns how many were.
    /// Cheap when nothing is missing: one `lstat` per object. A failure
    /// is logged once per outage; the programs stay attached either way
    /// (the descriptors held here keep them), only a restarted agent would
    /// then start without the pins.
    pub fn check(&mut self) -> u64 {
        let missing: Vec<usize> = self
            .objects
            .iter()
            .enumerate()
            .filter(|(_, (path, _))| {
                matches!(std::fs::symlink_metadata(path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound)
            })
            .map(|(i, _)| i)
            .collect();
        if missing.is_empty() {
            return 0;
        }
        let mut pinned = 0;
        let mut error = None;
        for i in &missing {
            let (path, fd) = &self.objects[*i];
            let made = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| obj_pin(fd.as_fd(), path));
            match made {
                Ok(()) => pinned += 1,
                Err(e) => {
                    error.get_or_insert_with(|| format!("{}: {e}", path.display()));
                }
            }
        }
        self.restored += pinned;
        match error {
            None => {
                warn!(
                    "{} of the {} pins under {} were removed while the agent ran: pinned them again from the agent's own handles (the programs never detached; {} restored since start)",
                    missing.len(),
                    self.objects.len(),
                    self.root.display(),
                    self.restored
                );
                if std::mem::take(&mut self.failing) {
                    info!("the pins under {} are complete again", self.root.display());
                }
            }
            Some(e) if !self.failing => {
                self.failing = true;
                warn!(
                    "{} of the {} pins under {} were removed while the agent ran and pinning them again failed ({e}); the programs stay attached while this agent runs, but a restarted agent will start without pins (retried every interval)",
                    missing.len(),
                    self.objects.len(),
                    self.root.display()
                );
            }
            Some(_) => {}
        }
        pinned
    }
}
