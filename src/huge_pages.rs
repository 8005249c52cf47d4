//! Transparent huge pages for this process. In: whether the command line asked to keep them.
//! Out: the kernel's THP switch for the process (`PR_SET_THP_DISABLE`), off by default.
//!
//! Where the kernel backs anonymous memory with 2 MiB pages (`enabled` = `always`, the
//! default of many distributions), the first touch of a region zeroes a whole 2 MiB page,
//! however little of it is used. The allocator returns freed memory to the kernel after a
//! short delay, so a load, which allocates and frees each segment's buffers in turn, faults
//! and zeroes fresh huge pages over and over: a 10M-event Parquet load spent 4.1-4.5 s of
//! system time (28% of its CPU samples in `clear_page_erms`) against 1.1-1.9 s with 4 KiB
//! pages, and took 6.2-6.7 s against 4.7-5.2 s (BENCHMARKS.md, issue 20). Query latencies moved
//! within ±9%, except counts of every event type from the index, 6-23% slower with 4 KiB
//! pages. MongoDB, Redis, Couchbase and WiredTiger advise turning THP off for the same
//! reason; this does it for Basalt's process only, without touching the machine's setting.

/// Turns transparent huge pages off for this process unless `keep` (a no-op off Linux), and
/// logs what the kernel then reports. A refusal by the kernel is logged and changes nothing
/// else.
pub(crate) fn set_transparent_huge_pages(keep: bool) {
    #[cfg(target_os = "linux")]
    if !keep {
        // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` only sets a flag of the calling
        // process's memory descriptor; it reads and writes no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            tracing::warn!(error = %e, "could not turn transparent huge pages off for this process");
        }
    }
    tracing::debug!(keep, off = ?transparent_huge_pages_off(), "transparent huge pages");
}

/// Whether transparent huge pages are off for this process (`PR_GET_THP_DISABLE`); `None`
/// off Linux or when the kernel does not say.
pub(crate) fn transparent_huge_pages_off() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `PR_GET_THP_DISABLE` only reads the flag.
        let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        (rc >= 0).then_some(rc == 1)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// Kept, the flag is left as it was; otherwise the process reports THP disabled.
    #[test]
    fn huge_pages_are_turned_off_for_the_process() {
        let before = super::transparent_huge_pages_off();
        assert!(before.is_some(), "the kernel reports the flag");
        super::set_transparent_huge_pages(true);
        assert_eq!(
            super::transparent_huge_pages_off(),
            before,
            "kept: left as it was"
        );
        super::set_transparent_huge_pages(false);
        assert_eq!(super::transparent_huge_pages_off(), Some(true));
    }
}
