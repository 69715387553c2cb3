//! The process's memory as the operating system sees it, and the allocator setting that keeps it
//! close to what the broker really holds.
//!
//! The memory monitor counts bytes that messages hold; the resident set is what the memory high
//! watermark is really about (RabbitMQ compares its whole process memory to it). The two differ
//! by the broker's fixed footprint and by what the allocator keeps after messages are freed.

/// The resident set size of this process in bytes (`/proc/self/statm`), `None` where it cannot
/// be read (not Linux, or `/proc` not mounted).
pub fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    // Fields: size resident shared text lib data dt, in pages.
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_size()))
}

use crate::sys::page_size;

/// Makes glibc's malloc use one arena for every thread. Call before any thread is started.
///
/// By default glibc gives threads their own arenas (up to 8 per core). A connection task moves
/// between tokio's worker threads, so a backlog freed by consumers in one arena is not reused by
/// a publisher that now allocates in another: under a memory alarm that cycles between set and
/// clear, the resident set grew by about the size of each cycle's burst (272 → 337 MiB over
/// 60 s with a 256 MiB watermark) while the bytes held stayed flat. With one arena it grows by
/// 8 MiB over the same run. Small allocations still come from glibc's per-thread caches, so
/// the cost in CPU was not measurable (`bench amqp` and `bench mqtt`, 16 B). An explicit
/// `MALLOC_ARENA_MAX` in the environment is left to win.
pub fn use_one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        crate::sys::use_one_malloc_arena();
    }
}

/// Returns the free memory glibc's malloc keeps to the operating system, on a thread of its own
/// (walking a large heap takes milliseconds); does nothing while an earlier call still runs.
///
/// Freed messages leave free blocks in the middle of the heap, which glibc keeps resident: once
/// a backlog has shrunk, the resident set would go on showing its peak, and the memory monitor
/// (which reads it) would take memory that is free for reuse for memory in use.
pub fn return_free_memory() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| {
            trim_heap();
            RUNNING.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        RUNNING.store(false, Ordering::Release);
    }
}

use crate::sys::trim_heap;

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trimming_returns_free_blocks_in_the_middle_of_the_heap() {
        const BLOCK: usize = 16 * 1024; // below the mmap threshold: from the heap
        const BLOCKS: usize = 4096; // 64 MiB
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8 | 1; BLOCK]).collect();
        // Keep every 64th block, so the free ones sit between live ones and glibc's own
        // trimming of the heap's top cannot give them back.
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        drop(blocks);
        let before = super::resident_bytes().expect("/proc/self/statm");
        super::trim_heap();
        let after = super::resident_bytes().expect("/proc/self/statm");
        assert!(
            after + (32 << 20) < before,
            "resident {before} -> {after} after freeing 63 MiB"
        );
        assert!(kept.iter().all(|b| b.len() == BLOCK));
    }

    #[test]
    fn resident_set_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = super::resident_bytes().expect("/proc/self/statm");
            assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
        }
    }
}
