//! Coarse deadlines for connections: the wait for their next request and
//! every timeout of an exchange (upstream write, response head, body reads,
//! client writes).
//!
//! Each connection holds one entry in its worker's table for its whole
//! life; a wait sets the entry's deadline and waker, and the worker's ticker
//! (every [`TICK`]) wakes the waits whose deadline has passed. A wait costs
//! a few stores, no allocation and no clock read, and an idle connection
//! holds 24 bytes here instead of a timer of its own (monoio's is 640 bytes,
//! more than all the rest of an idle connection; arming one reads the clock
//! and inserts into its timer wheel). Deadlines are kept to within a tick:
//! a wait lasts at least what it asks for, and at most one tick more.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How often the worker advances its clock.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// One connection's wait: the tick it ends at, and whom to wake then.
struct Entry {
    due: u64,
    waker: Option<Waker>,
}

const NOT_WAITING: u64 = u64::MAX;

/// A worker's clock, in ticks, and its connections' waits.
#[derive(Default)]
pub struct IdleClock {
    now: Cell<u64>,
    entries: RefCell<Vec<Entry>>,
    free: RefCell<Vec<u32>>,
}

impl IdleClock {
    /// One tick later: wake every wait now due. A linear pass over one
    /// small entry per connection (10,000 connections: a few µs per tick).
    pub fn advance(&self) {
        let now = self.now.get() + 1;
        self.now.set(now);
        for entry in self.entries.borrow_mut().iter_mut() {
            if entry.due <= now {
                entry.due = NOT_WAITING;
                if let Some(waker) = entry.waker.take() {
                    // monoio only queues the task: nothing runs in here.
                    waker.wake();
                }
            }
        }
    }

    /// An entry for a new connection, freed when the slot is dropped.
    pub fn slot(self: &Rc<Self>) -> IdleSlot {
        let mut entries = self.entries.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                entries.push(Entry {
                    due: NOT_WAITING,
                    waker: None,
                });
                u32::try_from(entries.len() - 1).unwrap_or(u32::MAX)
            }
        };
        IdleSlot {
            clock: self.clone(),
            index,
        }
    }

    fn with_entry<R>(&self, index: u32, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        self.entries.borrow_mut().get_mut(index as usize).map(f)
    }
}

/// A connection's entry in its worker's [`IdleClock`].
pub struct IdleSlot {
    clock: Rc<IdleClock>,
    index: u32,
}

impl IdleSlot {
    /// Ready once at least `wait` has passed (to within one tick more).
    /// One wait per slot at a time.
    pub fn after(&self, wait: Duration) -> Expiry<'_> {
        self.until(self.due_in(wait))
    }

    /// The tick by which at least `wait` will have passed, for a deadline
    /// kept across several waits ([`IdleSlot::until`]).
    pub fn due_in(&self, wait: Duration) -> Due {
        let ticks = wait.as_nanos().div_ceil(TICK.as_nanos());
        let ticks = u64::try_from(ticks).unwrap_or(u64::MAX / 2);
        // +1: the tick under way has partly passed already.
        Due(self.clock.now.get().saturating_add(ticks).saturating_add(1))
    }

    /// Ready once `due` has come.
    pub fn until(&self, due: Due) -> Expiry<'_> {
        Expiry {
            slot: self,
            due: due.0,
        }
    }

    /// `work`'s output, or [`TimedOut`] if it has not finished within
    /// `limit` (to within a tick). `work` is polled first, so what is ready
    /// wins over an expiry seen at the same time; dropped on expiry.
    pub fn within<F: Future>(&self, limit: Duration, work: F) -> By<'_, F> {
        self.by(self.due_in(limit), work)
    }

    /// [`IdleSlot::within`] with a deadline computed before.
    /// A plain future, not an `async fn`: `work` is moved into it once, not
    /// once per nested state machine (it is polled on every request).
    pub fn by<F: Future>(&self, due: Due, work: F) -> By<'_, F> {
        By {
            work,
            expiry: self.until(due),
        }
    }
}

pin_project_lite::pin_project! {
    /// A wait of [`IdleSlot::within`] or [`IdleSlot::by`].
    pub struct By<'a, F> {
        #[pin]
        work: F,
        expiry: Expiry<'a>,
    }
}

impl<F: Future> Future for By<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.work.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        Pin::new(this.expiry).poll(cx).map(|()| Err(TimedOut))
    }
}

/// A deadline on a worker's clock, in ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Due(u64);

/// A wait of [`IdleSlot::within`] that outlasted its limit.
#[derive(Debug, PartialEq, Eq)]
pub struct TimedOut;

impl Drop for IdleSlot {
    fn drop(&mut self) {
        let freed = self.clock.with_entry(self.index, |e| {
            e.due = NOT_WAITING;
            e.waker = None;
        });
        if freed.is_some() {
            self.clock.free.borrow_mut().push(self.index);
        }
    }
}

/// A wait on an [`IdleSlot`]; dropping it forgets the wait.
pub struct Expiry<'a> {
    slot: &'a IdleSlot,
    due: u64,
}

impl Future for Expiry<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let clock = &self.slot.clock;
        if clock.now.get() >= self.due {
            return Poll::Ready(());
        }
        let due = self.due;
        clock.with_entry(self.slot.index, |e| {
            e.due = due;
            match &e.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => e.waker = Some(cx.waker().clone()),
            }
        });
        Poll::Pending
    }
}

impl Drop for Expiry<'_> {
    fn drop(&mut self) {
        self.slot.clock.with_entry(self.slot.index, |e| {
            e.due = NOT_WAITING;
            e.waker = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll(e: &mut Expiry<'_>, count: &Arc<Count>) -> bool {
        let waker = Waker::from(count.clone());
        Pin::new(e)
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
    }

    #[test]
    fn a_wait_ends_after_its_ticks_and_wakes_its_task_once() {
        let clock = Rc::new(IdleClock::default());
        let slot = clock.slot();
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        // 250 ms: at least 3 ticks from a tick partly gone, so 4.
        let mut wait = slot.after(Duration::from_millis(250));
        assert!(!poll(&mut wait, &woken));
        for _ in 0..3 {
            clock.advance();
            assert!(!poll(&mut wait, &woken));
        }
        assert_eq!(woken.0.load(Ordering::Relaxed), 0);
        clock.advance();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        assert!(poll(&mut wait, &woken));
        clock.advance();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn within_gives_the_work_or_times_out_after_its_ticks() {
        let clock = Rc::new(IdleClock::default());
        let slot = clock.slot();
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        // Ready work wins, whatever the clock says.
        let mut done = std::pin::pin!(slot.within(Duration::ZERO, std::future::ready(7)));
        assert_eq!(done.as_mut().poll(&mut cx), Poll::Ready(Ok(7)));
        // Pending work: 150 ms is 2 ticks, +1 for the tick under way.
        let mut stuck =
            std::pin::pin!(slot.within(Duration::from_millis(150), std::future::pending::<()>()));
        assert!(stuck.as_mut().poll(&mut cx).is_pending());
        clock.advance();
        clock.advance();
        assert!(stuck.as_mut().poll(&mut cx).is_pending());
        assert_eq!(woken.0.load(Ordering::Relaxed), 0);
        clock.advance();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        assert_eq!(stuck.as_mut().poll(&mut cx), Poll::Ready(Err(TimedOut)));
        // A deadline kept across waits does not move.
        let due = slot.due_in(Duration::from_millis(100));
        clock.advance();
        let mut late = std::pin::pin!(slot.by(due, std::future::pending::<()>()));
        assert!(late.as_mut().poll(&mut cx).is_pending());
        clock.advance();
        assert_eq!(late.as_mut().poll(&mut cx), Poll::Ready(Err(TimedOut)));
    }

    #[test]
    fn a_dropped_wait_wakes_nobody_and_slots_are_reused() {
        let clock = Rc::new(IdleClock::default());
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let a = clock.slot();
        {
            let mut wait = a.after(Duration::ZERO);
            assert!(!poll(&mut wait, &woken));
        }
        clock.advance();
        assert_eq!(woken.0.load(Ordering::Relaxed), 0);
        let index = a.index;
        drop(a);
        let b = clock.slot();
        assert_eq!(b.index, index);
        assert_eq!(clock.entries.borrow().len(), 1);
        // A second connection's wait is its own.
        let c = clock.slot();
        let mut wait_b = b.after(Duration::from_millis(100));
        let mut wait_c = c.after(Duration::from_secs(1));
        assert!(!poll(&mut wait_b, &woken) && !poll(&mut wait_c, &woken));
        clock.advance();
        clock.advance();
        assert!(poll(&mut wait_b, &woken));
        assert!(!poll(&mut wait_c, &woken));
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
    }
}
