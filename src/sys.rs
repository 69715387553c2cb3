//! The operating-system calls the broker makes through libc, each behind a safe function.
//!
//! This is the one module allowed `unsafe` (the workspace denies it elsewhere), so every raw call
//! and its safety argument sit in one place to review.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::path::Path;

/// Sends SIGKILL to process `pid` (`switchboard bench --kill-pid`: a broker node killed to time
/// its cluster's failover).
pub fn kill_process(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// This machine's host name, `None` where `gethostname` fails.
pub fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The open-file limit of this process as (soft, hard), `None` for an unlimited value or where
/// `getrlimit` fails.
pub fn open_file_limit() -> Option<(u64, Option<u64>)> {
    let limit = get_nofile()?;
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    let soft = finite(limit.rlim_cur)?;
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every platform
    Some((soft as u64, finite(limit.rlim_max).map(|v| v as u64)))
}

/// Raises the soft open-file limit to the hard limit; returns whether the limit is now the hard
/// one.
pub fn raise_open_file_limit() -> bool {
    let Some(mut limit) = get_nofile() else {
        return false;
    };
    if limit.rlim_cur >= limit.rlim_max {
        return true;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit only reads the struct passed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
}

/// Sets the soft open-file limit to `soft` (at most the hard limit); whether it was set. The
/// tests of the listeners' behaviour out of descriptors lower it (`tests/hostile_fds.rs`).
pub fn set_open_file_limit(soft: u64) -> bool {
    let Some(mut limit) = get_nofile() else {
        return false;
    };
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not on every platform
    {
        limit.rlim_cur = soft.min(limit.rlim_max as u64) as libc::rlim_t;
    }
    // SAFETY: setrlimit only reads the struct passed.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
}

fn get_nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    ok.then_some(limit)
}

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_disk_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a writable statvfs buffer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field widths differ between platforms
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The size of a memory page in bytes (4096 where `sysconf` cannot tell).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// The CPU time the calling thread has used: what a measurement of its own work counts, without
/// the time other threads or processes held the core.
pub fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    std::time::Duration::new(secs, nanos)
}

/// Makes glibc's malloc use one arena for every thread; nothing on other allocators. Call it
/// before any other thread is started, as glibc asks for `M_ARENA_MAX`.
pub fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Gives the free pages of every malloc arena back to the operating system (glibc's
/// `malloc_trim(0)`, which also releases free pages in the middle of the heap); nothing on other
/// allocators.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it takes the arena locks itself.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_what_the_os_reports() {
        assert!(!super::host_name().unwrap_or_default().is_empty());
        assert!(super::page_size() >= 4096);
        assert!(super::free_disk_bytes(&std::env::temp_dir()).is_ok_and(|free| free > 0));
        assert!(super::free_disk_bytes(std::path::Path::new("/no/such/dir")).is_err());
        let before = super::thread_cpu_time();
        let spun = (0..200_000u64).fold(0u64, |a, i| a.wrapping_mul(31).wrapping_add(i));
        assert!(spun != 1 && super::thread_cpu_time() > before);
        if let Some((soft, Some(hard))) = super::open_file_limit() {
            assert!(soft <= hard);
        }
    }
}
