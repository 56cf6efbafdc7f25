//! Detection of sequential reading on one open file and the size of the window
//! to prefetch ahead of it.

/// Smallest prefetch window once a sequential pattern is seen.
pub const MIN_WINDOW: u64 = 1 << 20;

/// Tracks the read pattern of one open file.
#[derive(Debug, Clone)]
pub struct ReadaheadWindow {
    last_start: u64,
    last_end: u64,
    sequential_reads: u32,
    reads: u64,
    window: u64,
    max_window: u64,
}

impl ReadaheadWindow {
    /// A tracker that never prefetches more than `max_window` bytes ahead
    /// (0 disables readahead).
    pub fn new(max_window: u64) -> Self {
        Self {
            last_start: 0,
            last_end: 0,
            sequential_reads: 0,
            reads: 0,
            window: 0,
            max_window,
        }
    }

    /// Records a read of `[offset, offset + len)` and returns how many bytes past
    /// its end should be prefetched (0 = read only what was asked).
    ///
    /// A read counts as sequential when it starts at or slightly after the end of
    /// the previous one, or inside the previous one (the kernel issues reads of a
    /// sequential stream a little out of order). The window starts at
    /// [`MIN_WINDOW`] on the second sequential read and doubles up to the maximum;
    /// a random read resets it.
    pub fn on_read(&mut self, offset: u64, len: u64) -> u64 {
        if self.max_window == 0 {
            return 0;
        }
        let slack = len.max(128 * 1024) * 2;
        let sequential = self.reads > 0
            && offset.saturating_add(slack) >= self.last_start
            && offset <= self.last_end.saturating_add(slack);
        self.reads = self.reads.saturating_add(1);
        if sequential {
            self.sequential_reads = self.sequential_reads.saturating_add(1);
            self.last_end = self.last_end.max(offset + len);
        } else {
            self.sequential_reads = 0;
            self.window = 0;
            self.last_end = offset + len;
        }
        self.last_start = offset;
        if self.sequential_reads >= 1 {
            self.window = if self.window == 0 {
                MIN_WINDOW.min(self.max_window)
            } else {
                (self.window * 2).min(self.max_window)
            };
        }
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K128: u64 = 128 * 1024;

    #[test]
    fn sequential_grows_to_max() {
        let mut w = ReadaheadWindow::new(16 << 20);
        assert_eq!(w.on_read(0, K128), 0);
        assert_eq!(w.on_read(K128, K128), MIN_WINDOW);
        assert_eq!(w.on_read(2 * K128, K128), 2 * MIN_WINDOW);
        let mut last = 0;
        for i in 3..20 {
            last = w.on_read(i * K128, K128);
        }
        assert_eq!(last, 16 << 20);
    }

    #[test]
    fn random_read_resets() {
        let mut w = ReadaheadWindow::new(16 << 20);
        w.on_read(0, K128);
        w.on_read(K128, K128);
        assert!(w.on_read(2 * K128, K128) > 0);
        assert_eq!(w.on_read(900 << 20, K128), 0);
        assert_eq!(w.on_read(5 << 20, K128), 0);
        // A new stream from there.
        assert_eq!(w.on_read((5 << 20) + K128, K128), MIN_WINDOW);
    }

    #[test]
    fn slightly_out_of_order_still_sequential() {
        let mut w = ReadaheadWindow::new(8 << 20);
        w.on_read(0, K128);
        w.on_read(2 * K128, K128);
        assert!(w.on_read(K128, K128) > 0);
        assert!(w.on_read(3 * K128, K128) > 0);
    }

    #[test]
    fn disabled() {
        let mut w = ReadaheadWindow::new(0);
        for i in 0..10 {
            assert_eq!(w.on_read(i * K128, K128), 0);
        }
    }
}
