use super::*;

const A: Owner = Owner {
    session: 1,
    owner: 10,
};
const B: Owner = Owner {
    session: 2,
    owner: 10,
};
const C: Owner = Owner {
    session: 2,
    owner: 11,
};
const MAX: u64 = u64::MAX;

/// `(owner, 'r' | 'w' | 'u', start, end)`.
type Step = (Owner, char, u64, u64);

fn kind(c: char) -> Option<Kind> {
    match c {
        'r' => Some(Kind::Read),
        'w' => Some(Kind::Write),
        'u' => None,
        _ => panic!("bad kind {c}"),
    }
}

fn show(ls: &[Lock]) -> Vec<(char, u64, u64)> {
    ls.iter()
        .map(|l| {
            let k = if l.kind == Kind::Read { 'r' } else { 'w' };
            (k, l.start, l.end)
        })
        .collect()
}

#[test]
fn posix_semantics_table() {
    // (name, steps that must all succeed, owner to inspect, its locks after)
    type Case<'a> = (&'a str, &'a [Step], Owner, &'a [(char, u64, u64)]);
    let cases: &[Case] = &[
        ("one lock", &[(A, 'w', 0, 9)], A, &[('w', 0, 9)]),
        (
            "adjacent same type merge",
            &[(A, 'r', 0, 9), (A, 'r', 10, 19)],
            A,
            &[('r', 0, 19)],
        ),
        (
            "overlapping same type merge",
            &[(A, 'w', 0, 9), (A, 'w', 5, 30)],
            A,
            &[('w', 0, 30)],
        ),
        (
            "gap does not merge",
            &[(A, 'w', 0, 9), (A, 'w', 11, 20)],
            A,
            &[('w', 0, 9), ('w', 11, 20)],
        ),
        (
            "unlock the middle splits",
            &[(A, 'w', 0, 99), (A, 'u', 10, 19)],
            A,
            &[('w', 0, 9), ('w', 20, 99)],
        ),
        (
            "downgrade the middle splits into three",
            &[(A, 'w', 0, 99), (A, 'r', 10, 19)],
            A,
            &[('w', 0, 9), ('r', 10, 19), ('w', 20, 99)],
        ),
        (
            "upgrade the whole range",
            &[(A, 'r', 0, 99), (A, 'w', 0, 99)],
            A,
            &[('w', 0, 99)],
        ),
        (
            "upgrade a part",
            &[(A, 'r', 0, 99), (A, 'w', 50, 149)],
            A,
            &[('r', 0, 49), ('w', 50, 149)],
        ),
        (
            "to the end of the file",
            &[(A, 'w', 100, MAX), (A, 'u', 200, MAX)],
            A,
            &[('w', 100, 199)],
        ),
        (
            "unlock everything",
            &[(A, 'w', 0, 9), (A, 'r', 20, 29), (A, 'u', 0, MAX)],
            A,
            &[],
        ),
        ("unlock of nothing is fine", &[(A, 'u', 0, MAX)], A, &[]),
        (
            "readers share",
            &[(A, 'r', 0, 9), (B, 'r', 0, 9)],
            B,
            &[('r', 0, 9)],
        ),
        (
            "disjoint writers",
            &[(A, 'w', 0, 9), (B, 'w', 10, 19)],
            B,
            &[('w', 10, 19)],
        ),
        (
            "other owner's locks are not merged",
            &[(A, 'r', 0, 9), (B, 'r', 10, 19)],
            A,
            &[('r', 0, 9)],
        ),
        (
            "lock at the very end of the range",
            &[(A, 'w', MAX, MAX), (A, 'w', 0, MAX - 1)],
            A,
            &[('w', 0, MAX)],
        ),
    ];
    for (name, steps, who, want) in cases {
        let mut t = LockTable::default();
        for (o, k, s, e) in steps.iter() {
            t.set(1, *o, kind(*k), *s, *e, 7)
                .unwrap_or_else(|r| panic!("{name}: {o:?} {k} {s}..={e} refused: {r:?}"));
        }
        assert_eq!(show(&t.held(1, *who)), want.to_vec(), "{name}");
    }
}

#[test]
fn conflicts_table() {
    // (name, what A holds, what B asks, conflict expected)
    let cases: &[(&str, &[Step], Step, bool)] = &[
        (
            "write vs write overlap",
            &[(A, 'w', 0, 9)],
            (B, 'w', 9, 20),
            true,
        ),
        (
            "write vs read overlap",
            &[(A, 'w', 0, 9)],
            (B, 'r', 0, 0),
            true,
        ),
        (
            "read vs write overlap",
            &[(A, 'r', 0, 9)],
            (B, 'w', 5, 5),
            true,
        ),
        ("read vs read", &[(A, 'r', 0, 9)], (B, 'r', 0, 9), false),
        (
            "adjacent writes",
            &[(A, 'w', 0, 9)],
            (B, 'w', 10, 19),
            false,
        ),
        ("same owner never", &[(A, 'w', 0, 9)], (A, 'w', 0, 9), false),
        (
            "same session, other owner",
            &[(B, 'w', 0, 9)],
            (C, 'r', 0, 9),
            true,
        ),
        (
            "after the holder unlocked the bytes",
            &[(A, 'w', 0, 99), (A, 'u', 40, 59)],
            (B, 'w', 40, 59),
            false,
        ),
        (
            "after the holder downgraded",
            &[(A, 'w', 0, 99), (A, 'r', 0, 99)],
            (B, 'r', 50, 50),
            false,
        ),
        (
            "whole file vs end",
            &[(A, 'r', 0, MAX)],
            (B, 'w', MAX, MAX),
            true,
        ),
    ];
    for (name, held, (o, k, s, e), want) in cases {
        let mut t = LockTable::default();
        for (ho, hk, hs, he) in held.iter() {
            t.set(1, *ho, kind(*hk), *hs, *he, 41).unwrap();
        }
        let got = t.set(1, *o, kind(*k), *s, *e, 42);
        assert_eq!(got.is_err(), *want, "{name}: {got:?}");
        if let Err(r) = got {
            let Refusal::Conflict(l) = r else {
                panic!("{name}: refused for {r:?}, not a conflict")
            };
            assert_eq!(l.owner, held[0].0, "{name}");
            assert_eq!(l.pid, 41, "{name}: the pid the holder's kernel passed");
        }
        // Another inode is never affected.
        assert!(t.set(2, *o, kind(*k), *s, *e, 42).is_ok(), "{name}");
    }
}

#[test]
fn getlk_reports_the_conflicting_lock() {
    let mut t = LockTable::default();
    t.set(5, A, Some(Kind::Read), 100, 199, 1234).unwrap();
    assert_eq!(t.conflict(5, B, Kind::Read, 0, MAX), None);
    let c = t.conflict(5, B, Kind::Write, 150, 150).unwrap();
    assert_eq!(
        (c.owner, c.kind, c.start, c.end, c.pid),
        (A, Kind::Read, 100, 199, 1234)
    );
    assert_eq!(
        t.conflict(5, A, Kind::Write, 0, MAX),
        None,
        "own locks never conflict"
    );
}

#[test]
fn release_owner_and_session() {
    let mut t = LockTable::default();
    t.set(1, A, Some(Kind::Write), 0, 9, 1).unwrap();
    t.set(2, A, Some(Kind::Write), 0, 9, 1).unwrap();
    t.set(1, B, Some(Kind::Write), 10, 19, 2).unwrap();
    t.set(1, C, Some(Kind::Write), 20, 29, 3).unwrap();
    t.release_owner(1, A);
    assert!(t.held(1, A).is_empty());
    assert_eq!(t.held(2, A).len(), 1, "other inodes keep their locks");
    assert_eq!(t.release_session(2), 2, "B and C are both session 2");
    assert_eq!(t.len(), 1);
    assert!(t.set(1, A, Some(Kind::Write), 0, MAX, 1).is_ok());
}

#[test]
fn waiters_are_woken_by_a_release() {
    let mut t = LockTable::default();
    t.set(1, A, Some(Kind::Write), 0, 9, 1).unwrap();
    let (id, notify) = t.wait(1, B, Kind::Write, 0, 9);
    let mut woken = Box::pin(notify.notified());
    // Nothing changed: not woken.
    assert!(futures_now(&mut woken).is_none());
    t.set(1, A, None, 0, 9, 1).unwrap();
    // notify_one stores a permit, so a wake before the wait is not lost.
    assert!(futures_now(&mut woken).is_some());
    t.stop_waiting(id);
    assert_eq!(t.waiting(), 0);

    let (_, n2) = t.wait(1, B, Kind::Write, 0, 9);
    t.set(1, A, Some(Kind::Write), 50, 59, 1).unwrap();
    t.release_session(A.session);
    assert!(futures_now(&mut Box::pin(n2.notified())).is_some());
}

fn futures_now<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match std::pin::Pin::new(f).poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[test]
fn deadlock_detection_table() {
    const D: Owner = Owner {
        session: 3,
        owner: 1,
    };
    // (name, locks held, requests already waiting, the new waiting request, deadlock)
    type Wait = (Owner, char, u64, u64);
    type Case<'a> = (&'a str, &'a [Step], &'a [Wait], Wait, bool);
    let cases: &[Case] = &[
        (
            "two owners cross",
            &[(A, 'w', 0, 0), (B, 'w', 1, 1)],
            &[(A, 'w', 1, 1)],
            (B, 'w', 0, 0),
            true,
        ),
        (
            "three owners in a cycle",
            &[(A, 'w', 0, 0), (B, 'w', 1, 1), (D, 'w', 2, 2)],
            &[(A, 'w', 1, 1), (B, 'w', 2, 2)],
            (D, 'w', 0, 0),
            true,
        ),
        (
            "a chain without a cycle",
            &[(A, 'w', 0, 0), (B, 'w', 1, 1), (D, 'w', 2, 2)],
            &[(A, 'w', 1, 1)],
            (B, 'w', 2, 2),
            false,
        ),
        (
            "waiting for a range the waiter does not hold",
            &[(A, 'w', 0, 0), (B, 'w', 5, 5)],
            &[(A, 'w', 5, 5)],
            (B, 'w', 1, 1),
            false,
        ),
        (
            "readers do not block readers",
            &[(A, 'r', 0, 0), (B, 'w', 1, 1)],
            &[(A, 'w', 1, 1)],
            (B, 'r', 0, 0),
            false,
        ),
    ];
    for (name, held, waiting, (o, k, s, e), want) in cases {
        let mut t = LockTable::default();
        for (ho, hk, hs, he) in held.iter() {
            t.set(1, *ho, kind(*hk), *hs, *he, 1).unwrap();
        }
        for (wo, wk, ws, we) in waiting.iter() {
            let k = kind(*wk).unwrap();
            assert!(!t.would_deadlock(1, *wo, k, *ws, *we), "{name}: setup");
            t.wait(1, *wo, k, *ws, *we);
        }
        assert_eq!(
            t.would_deadlock(1, *o, kind(*k).unwrap(), *s, *e),
            *want,
            "{name}"
        );
    }
}

#[test]
fn caps_count_ranges_per_session_and_in_all() {
    let mut t = LockTable {
        caps: LockCaps {
            per_session: 3,
            total: 5,
        },
        ..LockTable::default()
    };
    // A's three ranges reach its cap; a fourth is refused, naming the cap.
    for i in 0..3 {
        t.set(1, A, Some(Kind::Write), i * 10, i * 10 + 1, 1)
            .unwrap();
    }
    assert_eq!(
        t.set(1, A, Some(Kind::Write), 100, 101, 1),
        Err(Refusal::SessionCap(3))
    );
    // Changes that add no range still go: merging, a downgrade, unlocking.
    t.set(1, A, Some(Kind::Write), 2, 9, 1).unwrap();
    t.set(1, A, Some(Kind::Read), 0, 11, 1).unwrap();
    assert_eq!(t.held_by(1), 2);
    // Splitting one range in two adds one: allowed up to the cap, not past it.
    t.set(1, A, None, 5, 5, 1).unwrap();
    assert_eq!(t.held_by(1), 3);
    assert_eq!(t.set(1, A, None, 7, 7, 1), Err(Refusal::SessionCap(3)));
    // Another session counts against the total.
    t.set(2, B, Some(Kind::Read), 0, 0, 1).unwrap();
    t.set(3, C, Some(Kind::Read), 0, 0, 1).unwrap();
    assert_eq!(t.len(), 5);
    assert_eq!(
        t.set(4, C, Some(Kind::Read), 0, 0, 1),
        Err(Refusal::TotalCap(5))
    );
    // Re-asserted locks are not capped.
    let l = Lock {
        owner: C,
        kind: Kind::Read,
        start: 0,
        end: 0,
        pid: 1,
    };
    t.reassert(4, l).unwrap();
    assert_eq!(t.caps.total, 5, "the caps are back");
    assert_eq!((t.len(), t.held_by(2)), (6, 3));
    // Releasing gives room back, by owner and by session.
    t.release_owner(1, A);
    assert_eq!((t.len(), t.held_by(1)), (3, 0));
    assert_eq!(t.release_session(2), 3);
    assert_eq!((t.len(), t.held_by(2)), (0, 0));
    assert!(t.is_empty());
}
