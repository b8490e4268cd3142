//! Locks over the names in a backing directory, for the one operation of the daemon that replaces
//! a name it did not get from the kernel: compaction renames its rewritten file over the file's
//! last known name. Between its check that the name still leads to the file and its rename, a
//! rename, unlink or link through the mount must not move, remove or add a name of that file,
//! or the rename would bring back a removed name, or put the new copy at the old name while
//! writers follow the file to its new one. Directory operations and compaction's install take the
//! locks of the directories whose names they change; each is held across one or two syscalls.

use parking_lot::{Mutex, MutexGuard};

/// Lock stripes: directories share a stripe by node id, so the set stays fixed in size.
const STRIPES: usize = 64;

/// Striped locks keyed by directory node id.
pub struct NameLocks {
    stripes: [Mutex<()>; STRIPES],
}

/// The stripes held for one operation, released on drop.
pub struct NamesHeld<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl Default for NameLocks {
    fn default() -> Self {
        NameLocks {
            stripes: std::array::from_fn(|_| Mutex::new(())),
        }
    }
}

impl NameLocks {
    /// Locks the names of the directories `dirs` (node ids; duplicates allowed). Stripes are
    /// taken in ascending order, so two callers never wait for each other in a cycle.
    pub fn lock(&self, dirs: &[u64]) -> NamesHeld<'_> {
        let mut idx: Vec<usize> = dirs.iter().map(|d| (*d as usize) % STRIPES).collect();
        idx.sort_unstable();
        idx.dedup();
        NamesHeld {
            _guards: idx.into_iter().map(|i| self.stripes[i].lock()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locking_overlapping_directory_sets_in_any_order_never_deadlocks() {
        let locks = std::sync::Arc::new(NameLocks::default());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let locks = locks.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let a = (i * 7 + t) % 130;
                        let b = (i * 13 + 3 * t) % 130;
                        let _held = if t % 2 == 0 {
                            locks.lock(&[a, b])
                        } else {
                            locks.lock(&[b, a, b])
                        };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_directory_held_is_not_taken_again_until_released() {
        let locks = NameLocks::default();
        let held = locks.lock(&[5]);
        assert!(locks.stripes[5].try_lock().is_none());
        assert!(locks.stripes[6].try_lock().is_some());
        drop(held);
        assert!(locks.stripes[5].try_lock().is_some());
    }
}
