//! One operation at a time per volume or snapshot: a second call for the same
//! id while one is running gets ABORTED, as the CSI specification asks.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::Status;

/// The ids with an operation in progress.
#[derive(Clone, Default)]
pub struct OpLocks {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation on an id runs; releases the id when dropped.
pub struct OpGuard {
    busy: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl OpLocks {
    /// Takes `key`, or fails with ABORTED when another operation holds it.
    pub fn lock(&self, key: &str) -> Result<OpGuard, Status> {
        if !self.busy.lock().insert(key.to_string()) {
            return Err(Status::aborted(format!(
                "an operation on {key} is already in progress; retry when it has finished"
            )));
        }
        Ok(OpGuard {
            busy: self.busy.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.busy.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_operation_is_aborted_until_the_first_ends() {
        let l = OpLocks::default();
        let g = l.lock("v").unwrap();
        assert_eq!(l.lock("v").err().unwrap().code(), tonic::Code::Aborted);
        assert!(l.lock("w").is_ok());
        drop(g);
        assert!(l.lock("v").is_ok());
    }
}
