//! The data dir's lock and node id. In: a data dir. Out: an exclusive lock held while the
//! store is open (a second server on the same data dir fails to start instead of deleting
//! the first one's staged objects as its own leftovers), and a node id kept in
//! `<data_dir>/node_id` that names the objects this data dir's server stages.

use std::path::Path;

use crate::durable::write_file_durably;
use crate::error::{IngestError, Result};

/// An exclusive `flock` on `<data_dir>/LOCK`, released when dropped (or when the process
/// dies, however it dies).
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    pub fn take(data_dir: &Path) -> Result<DataDirLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("LOCK"))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor this function owns; no memory is involved.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return Err(IngestError::DataDirLocked(data_dir.display().to_string()));
                }
                return Err(e.into());
            }
        }
        Ok(DataDirLock { _file: file })
    }
}

/// The data dir's node id: 12 hex digits, made at the first start.
pub fn node_id(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("node_id");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let id = s.trim();
        if id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    write_file_durably(&path, id.as_bytes())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_per_data_dir_with_a_stable_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let a = DataDirLock::take(dir.path()).unwrap();
        assert!(matches!(
            DataDirLock::take(dir.path()),
            Err(IngestError::DataDirLocked(_))
        ));
        drop(a);
        DataDirLock::take(dir.path()).unwrap();
        let id = node_id(dir.path()).unwrap();
        assert_eq!(node_id(dir.path()).unwrap(), id);
        assert_eq!(id.len(), 12);
    }
}
