//! The size of a file as this client knows it: the master's size combined with
//! this client's own writes and truncates that the master may not reflect yet.
//!
//! Every local change (a write, a truncate) is numbered. A flush that completed
//! (data on the chunkservers and write sessions ended, so the master keeps
//! `max(size, written end)`) acknowledges every change numbered before it began;
//! a truncate answered by the master acknowledges itself. A size the master
//! sends is taken as it is only when the request left while every local change
//! was acknowledged and none happened until the answer: the master then saw all
//! of them (and possibly other clients' changes, also shrinking ones). An answer
//! to a request sent before a local truncate is ignored (it predates the exact
//! size the truncate set). Otherwise it can only make the known size larger
//! (another client extended the file).

/// A file's size as this client knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KnownSize {
    size: u64,
    /// Number of the last local change.
    changes: u64,
    /// Every local change up to this number is reflected by the master.
    acked: u64,
    /// Number of the last local truncate.
    truncated: u64,
}

/// Taken just before asking the master for a size; see [`KnownSize::observe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ticket {
    changes: u64,
    synced: bool,
}

impl KnownSize {
    /// The size: the master's as last observed, grown by this client's writes
    /// and set exactly by its truncates.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// True when the master reflects every local change.
    pub(crate) fn synced(&self) -> bool {
        self.acked == self.changes
    }

    /// Records a local write ending at `end`.
    pub(crate) fn wrote(&mut self, end: u64) {
        self.size = self.size.max(end);
        self.changes += 1;
    }

    /// Records a local truncate to `size` that the master has applied: the size
    /// is exact, and acknowledged when nothing else was pending.
    pub(crate) fn truncated(&mut self, size: u64) {
        let was_synced = self.synced();
        self.size = size;
        self.changes += 1;
        self.truncated = self.changes;
        if was_synced {
            self.acked = self.changes;
        }
    }

    /// The number of the last local change, taken before a flush starts.
    pub(crate) fn mark(&self) -> u64 {
        self.changes
    }

    /// A flush that started at `mark` completed: the master reflects every change
    /// up to it.
    pub(crate) fn flushed(&mut self, mark: u64) {
        self.acked = self.acked.max(mark.min(self.changes));
    }

    /// Taken before a request whose answer carries the master's size.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket {
            changes: self.changes,
            synced: self.synced(),
        }
    }

    /// Takes in the size `master` answered to a request sent with `ticket` and
    /// returns the size to use (and report to the kernel).
    pub(crate) fn observe(&mut self, ticket: Ticket, master: u64) -> u64 {
        if ticket.synced && ticket.changes == self.changes {
            self.size = master;
        } else if ticket.changes >= self.truncated {
            self.size = self.size.max(master);
        }
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fsx case: a truncate, a read that caches the master's size, then an
    /// extending write. The size the master sent before the write must not clip
    /// reads after it, neither before nor after the flush.
    #[test]
    fn a_stale_master_size_never_hides_a_local_extension() {
        let mut k = KnownSize::default();
        let t = k.ticket();
        assert_eq!(k.observe(t, 0), 0);
        k.truncated(0x2e42d);
        assert!(k.synced());
        let before_write = k.ticket();
        k.wrote(0x1a5bea + 0x3cc95);
        // An answer to a request sent before the write.
        assert_eq!(k.observe(before_write, 0x2e42d), 0x1e287f);
        // Flushed; an answer to a request sent before the flush completed.
        let during_flush = k.ticket();
        let mark = k.mark();
        k.flushed(mark);
        assert!(k.synced());
        assert_eq!(k.observe(during_flush, 0x2e42d), 0x1e287f);
        // After the flush the master's size is authoritative.
        let t = k.ticket();
        assert_eq!(k.observe(t, 0x1e287f), 0x1e287f);
    }

    #[test]
    fn synced_answers_are_exact_also_when_another_client_shrank_the_file() {
        let mut k = KnownSize::default();
        let t = k.ticket();
        k.observe(t, 5000);
        let t = k.ticket();
        assert_eq!(k.observe(t, 100), 100);
        let t = k.ticket();
        assert_eq!(k.observe(t, 9000), 9000);
    }

    #[test]
    fn a_change_while_a_request_is_out_only_grows_the_size() {
        let mut k = KnownSize::default();
        let t = k.ticket();
        k.observe(t, 1000);
        let t = k.ticket();
        k.truncated(10);
        assert_eq!(k.observe(t, 1000), 10, "an answer from before a truncate");
        let t = k.ticket();
        k.wrote(20);
        assert_eq!(k.observe(t, 500), 500, "another client extended the file");
        let mut k = KnownSize::default();
        let t = k.ticket();
        k.wrote(300);
        assert_eq!(k.observe(t, 200), 300);
    }

    #[test]
    fn only_changes_before_the_flush_mark_are_acknowledged() {
        let mut k = KnownSize::default();
        k.wrote(100);
        let mark = k.mark();
        k.wrote(200);
        k.flushed(mark);
        assert!(!k.synced());
        let t = k.ticket();
        assert_eq!(k.observe(t, 100), 200, "the second write is not flushed");
        let mark = k.mark();
        k.flushed(mark);
        assert!(k.synced());
    }

    #[test]
    fn truncate_is_exact_and_acknowledged_only_when_nothing_was_pending() {
        let mut k = KnownSize::default();
        k.wrote(5000);
        k.truncated(10);
        assert_eq!(k.size(), 10);
        assert!(!k.synced(), "the write before it was never flushed");
        let mark = k.mark();
        k.flushed(mark);
        k.truncated(7);
        assert!(k.synced());
        let t = k.ticket();
        assert_eq!(k.observe(t, 7), 7);
    }
}
