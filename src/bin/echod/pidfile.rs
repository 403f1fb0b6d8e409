//! The pid file (docs/protocol.md "Command line"): written after binding,
//! atomically, never through a symlink, and removed at exit only if it still
//! holds this process's PID.
//!
//! This file owns writing and removing it. When it is written (after the
//! listeners are bound, before the readiness line) is `main`'s business; the
//! third signal's handler removes it on its own way out (`sys.rs`).

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A pid file this process wrote; removed on drop if it is still ours.
#[derive(Debug)]
pub struct PidFile {
    /// The path from `--pid-file`.
    path: PathBuf,
    /// The PID written there: the file is removed only while it holds it.
    pid: u32,
}

impl PidFile {
    /// Writes `pid` to `path` atomically: a temporary file in the same
    /// directory, then `rename(2)` over `path`. A reader sees the old file or
    /// the whole new one, never an empty or half-written one; and `rename`
    /// replaces whatever entry `path` is, a symlink included, rather than
    /// writing through it, so a symlink planted at the path cannot make
    /// echod overwrite the file it points to.
    ///
    /// # Errors
    ///
    /// The OS error of the step that failed; the temporary file is removed.
    pub fn write(path: &Path, pid: u32) -> io::Result<PidFile> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{pid}.tmp"));
        let temp = path.with_file_name(temp_name);
        let written = write_new(&temp, pid).and_then(|()| fs::rename(&temp, path));
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            return Err(err);
        }
        Ok(PidFile {
            path: path.to_owned(),
            pid,
        })
    }

    /// True while the file at the path is a regular file holding our PID.
    fn is_still_ours(&self) -> bool {
        // Not a symlink, a FIFO or a directory put there since: none is ours,
        // and reading a FIFO would block the exit.
        let is_file = fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_file());
        is_file
            && fs::read_to_string(&self.path)
                .is_ok_and(|text| text.trim().parse::<u32>() == Ok(self.pid))
    }
}

impl Drop for PidFile {
    /// Removes the file unless another process wrote its own PID there
    /// since: a new instance started on the same path (a `--reuse-port`
    /// hand-over) keeps its file when the old one exits. Between the check
    /// and the unlink another writer could still slip in; without a lock
    /// that window cannot be closed, and it is two system calls wide.
    fn drop(&mut self) {
        if self.is_still_ours() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates `temp` (never opening an existing entry, so never through a
/// symlink) and writes the PID line into it.
fn write_new(temp: &Path, pid: u32) -> io::Result<()> {
    // A leftover of an earlier process with the same PID; `remove_file`
    // unlinks a symlink itself, never its target.
    let _ = fs::remove_file(temp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(temp)?;
    file.write_all(format!("{pid}\n").as_bytes())
}
