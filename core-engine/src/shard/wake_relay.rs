//! Answers from shards reach an async thread with one wake-up per batch, not one per answer.
//!
//! A shard answers many requests in one drain (a commit's worth of pushes). Woken directly,
//! each answer costs the HTTP thread's tokio runtime a write to its eventfd (tokio wakes its
//! driver on every wake from another thread), and the runtime then runs each answered request
//! alone and flushes its connection alone: one `writev` per response on an HTTP/2 connection
//! that carries hundreds of streams. A thread that relays ([`relay_wakes_on_this_thread`])
//! waits on shards through [`Relayed`]: its waker queues the waiting task's own waker in the
//! thread's [`WakeQueue`] and wakes the queue's task only when that task is not already due
//! to run. The queue's task then wakes every queued task from inside the runtime (no
//! syscall), so the requests answered meanwhile run together, ahead of their connection's
//! task, which writes their responses in one go.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

thread_local! {
    /// This thread's queue, on a thread that relays; `None` on any other thread.
    static WAKE_QUEUE: RefCell<Option<Arc<WakeQueue>>> = const { RefCell::new(None) };
}

/// Locks `m`; nothing panics while these locks are held, so a poisoned one is still sound.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The wakers of one relaying thread's tasks whose answers came, and the task that wakes them.
#[derive(Default)]
struct WakeQueue {
    wakers: Mutex<Vec<Waker>>,
    /// Set by the first waker queued since the queue's task last ran: later ones only queue.
    due: AtomicBool,
    /// The queue's own task (see [`relay_wakes_on_this_thread`]).
    task: Mutex<Option<Waker>>,
}

impl WakeQueue {
    fn push(&self, waker: Waker) {
        lock(&self.wakers).push(waker);
        if !self.due.swap(true, Ordering::AcqRel) {
            // No waker before the queue's task is first polled; that poll drains the queue.
            if let Some(task) = lock(&self.task).as_ref() {
                task.wake_by_ref();
            }
        }
    }
}

/// Makes this thread relay the wake-ups of its waits on shards, and answers the task that
/// wakes them: spawn it on this thread's runtime (it never ends). Waits made on this thread
/// before the task first runs are woken at its first run.
pub fn relay_wakes_on_this_thread() -> impl Future<Output = ()> + Send + 'static {
    let queue = Arc::new(WakeQueue::default());
    WAKE_QUEUE.with(|q| *q.borrow_mut() = Some(queue.clone()));
    let mut woken = Vec::new();
    std::future::poll_fn(move |cx| {
        *lock(&queue.task) = Some(cx.waker().clone());
        // Cleared before the queue is taken: a waker queued after the take wakes this task again.
        queue.due.store(false, Ordering::Release);
        std::mem::swap(&mut woken, &mut *lock(&queue.wakers));
        for waker in woken.drain(..) {
            waker.wake();
        }
        Poll::Pending
    })
}

/// The waker a [`Relayed`] future's inner future sees: it passes the waiting task's waker
/// to the queue.
struct Relay {
    queue: Arc<WakeQueue>,
    /// The waiting task's waker, from its last poll until a wake passes it on.
    task: Mutex<Option<Waker>>,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            self.queue.push(task);
        }
    }
}

/// A future (an answer from a shard) whose wake-up goes through the relaying thread's queue
/// when it was made on one; otherwise it is `inner` as is.
pub struct Relayed<F> {
    inner: F,
    relay: Option<(Arc<Relay>, Waker)>,
}

impl<F> Relayed<F> {
    /// Wraps `inner` for this thread's queue, if this thread relays.
    pub fn new(inner: F) -> Self {
        let relay = WAKE_QUEUE.with(|q| q.borrow().clone()).map(|queue| {
            let relay = Arc::new(Relay { queue, task: Mutex::new(None) });
            let waker = Waker::from(relay.clone());
            (relay, waker)
        });
        Relayed { inner, relay }
    }
}

impl<F: Future + Unpin> Future for Relayed<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        match &this.relay {
            None => Pin::new(&mut this.inner).poll(cx),
            Some((relay, waker)) => {
                *lock(&relay.task) = Some(cx.waker().clone());
                Pin::new(&mut this.inner).poll(&mut Context::from_waker(waker))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_channel::oneshot;
    use std::sync::atomic::AtomicUsize;

    /// Counts its wakes.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll<F: Future + Unpin>(f: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn answers_wake_the_queue_task_once_and_it_wakes_each_waiter() {
        std::thread::spawn(|| {
            let mut queue_task = Box::pin(relay_wakes_on_this_thread());
            let queue_wakes = Arc::new(CountingWaker::default());
            let queue_waker = Waker::from(queue_wakes.clone());
            assert!(queue_task.as_mut().poll(&mut Context::from_waker(&queue_waker)).is_pending());

            let waiters: Vec<_> = (0..3).map(|_| Arc::new(CountingWaker::default())).collect();
            let (mut senders, mut answers) = (Vec::new(), Vec::new());
            for (i, waiter) in waiters.iter().enumerate() {
                let (tx, rx) = oneshot::channel::<usize>();
                let mut rx = Relayed::new(rx);
                assert!(rx.relay.is_some(), "made on a relaying thread");
                assert!(poll(&mut rx, &Waker::from(waiter.clone())).is_pending());
                senders.push((i, tx));
                answers.push((i, rx));
            }
            // Answered from another thread, as a shard does.
            std::thread::spawn(move || {
                for (i, tx) in senders {
                    tx.send(i).unwrap();
                }
            })
            .join()
            .unwrap();

            assert_eq!(queue_wakes.0.load(Ordering::SeqCst), 1, "one wake for three answers");
            assert!(waiters.iter().all(|w| w.0.load(Ordering::SeqCst) == 0), "waiters wait for the queue task");
            assert!(queue_task.as_mut().poll(&mut Context::from_waker(&queue_waker)).is_pending());
            assert!(waiters.iter().all(|w| w.0.load(Ordering::SeqCst) == 1), "each waiter woken once");
            for (i, mut rx) in answers {
                let waker = Waker::from(Arc::new(CountingWaker::default()));
                assert_eq!(poll(&mut rx, &waker), Poll::Ready(Ok(i)));
            }

            // Due again after it ran: the next answer wakes it again.
            let (tx, rx) = oneshot::channel::<usize>();
            let mut rx = Relayed::new(rx);
            assert!(poll(&mut rx, &Waker::from(Arc::new(CountingWaker::default()))).is_pending());
            tx.send(7).unwrap();
            assert_eq!(queue_wakes.0.load(Ordering::SeqCst), 2);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_that_does_not_relay_polls_the_inner_future_as_is() {
        std::thread::spawn(|| {
            let (tx, rx) = oneshot::channel::<u8>();
            let mut rx = Relayed::new(rx);
            assert!(rx.relay.is_none());
            let waiter = Arc::new(CountingWaker::default());
            assert!(poll(&mut rx, &Waker::from(waiter.clone())).is_pending());
            tx.send(1).unwrap();
            assert_eq!(waiter.0.load(Ordering::SeqCst), 1, "woken directly");
            assert_eq!(poll(&mut rx, &Waker::from(waiter)), Poll::Ready(Ok(1)));
        })
        .join()
        .unwrap();
    }
}
