//! The disk-free alarm: publishers are blocked while the data directory's file system has less
//! free space than `server.disk_free_limit_bytes`, so the store never has to fail a write for
//! lack of space in normal operation (and if it does, it retries without corrupting anything).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// How often free space is checked.
const INTERVAL: Duration = Duration::from_millis(500);

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a writable statvfs buffer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field widths differ between platforms
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Checks the free space of `dir`'s file system until `shutdown` turns true, telling
/// `set_alarm` each time whether it is below `limit` bytes.
pub async fn run(
    dir: PathBuf,
    limit: u64,
    mut shutdown: watch::Receiver<bool>,
    set_alarm: impl Fn(bool),
) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match free_bytes(&dir) {
            Ok(free) => set_alarm(free < limit),
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot read free disk space")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_space_of_the_temp_dir_is_readable() {
        let free = super::free_bytes(&std::env::temp_dir()).expect("statvfs");
        assert!(free > 0);
        assert!(super::free_bytes(std::path::Path::new("/no/such/dir")).is_err());
    }
}
