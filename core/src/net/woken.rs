//! A stream polled only once it has said it may have something.
//!
//! A connection's loop waits on several sources at once (the client's socket, its batches,
//! broadcasts, timers), and `select!` polls every one of them each time any of them wakes the
//! task. Under fan-out the task wakes for every batch, and polling the WebSocket's read half
//! then is not free: it takes the split halves' lock and has tungstenite zero its read buffer
//! before finding nothing to read. Wrapped here, that source is polled only after its own
//! waker fired (or after it last produced an item, since more may already be buffered).

use futures_util::task::AtomicWaker;
use futures_util::Stream;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{AcqRel, Release};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub struct Woken<S> {
    inner: S,
    signal: Arc<Signal>,
    /// The waker handed to `inner`: it raises `signal` and wakes whoever polled last.
    waker: Waker,
}

struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Release);
        self.task.wake();
    }
}

impl<S> Woken<S> {
    pub fn new(inner: S) -> Woken<S> {
        // Raised at first: nothing has registered interest yet.
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(signal.clone());
        Woken {
            inner,
            signal,
            waker,
        }
    }
}

impl<S: Stream + Unpin> Stream for Woken<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, AcqRel) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_next(&mut Context::from_waker(&this.waker));
        if polled.is_ready() {
            // More may be buffered behind it, with no wake-up to come for it.
            this.signal.woken.store(true, Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering::Relaxed;

    /// A stream that counts its polls and yields what `items` holds, asking for a wake-up
    /// when it is empty.
    struct Counted {
        polls: Arc<AtomicUsize>,
        items: Arc<std::sync::Mutex<(Vec<u32>, Option<Waker>)>>,
    }

    impl Stream for Counted {
        type Item = u32;
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.polls.fetch_add(1, Relaxed);
            let mut items = self.items.lock().unwrap();
            match items.0.pop() {
                Some(item) => Poll::Ready(Some(item)),
                None => {
                    items.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    #[test]
    fn polls_the_inner_stream_only_after_its_own_wake_up() {
        let polls = Arc::new(AtomicUsize::new(0));
        let items = Arc::new(std::sync::Mutex::new((vec![2, 1], None::<Waker>)));
        let mut woken = Woken::new(Counted {
            polls: polls.clone(),
            items: items.clone(),
        });
        let noop = Waker::noop();
        let mut cx = Context::from_waker(noop);
        let mut next = || woken.poll_next_unpin(&mut cx);

        assert_eq!(next(), Poll::Ready(Some(1)));
        assert_eq!(
            next(),
            Poll::Ready(Some(2)),
            "what is buffered is read without a wake-up"
        );
        assert_eq!(next(), Poll::Pending);
        let after_empty = polls.load(Relaxed);
        for _ in 0..10 {
            assert_eq!(next(), Poll::Pending);
        }
        assert_eq!(
            polls.load(Relaxed),
            after_empty,
            "not polled while nothing woke it"
        );

        let waker = {
            let mut items = items.lock().unwrap();
            items.0.push(3);
            items.1.take().expect("the stream kept a waker")
        };
        waker.wake();
        assert_eq!(next(), Poll::Ready(Some(3)));
        assert_eq!(polls.load(Relaxed), after_empty + 1);
    }

    #[test]
    fn its_wake_up_reaches_the_task_that_polled_it_last() {
        let woke = Arc::new(AtomicUsize::new(0));
        struct CountWakes(Arc<AtomicUsize>);
        impl Wake for CountWakes {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Relaxed);
            }
        }
        let task = Waker::from(Arc::new(CountWakes(woke.clone())));
        let items = Arc::new(std::sync::Mutex::new((Vec::new(), None::<Waker>)));
        let mut woken = Woken::new(Counted {
            polls: Arc::default(),
            items: items.clone(),
        });
        assert_eq!(
            woken.poll_next_unpin(&mut Context::from_waker(&task)),
            Poll::Pending
        );
        let inner = items.lock().unwrap().1.take().expect("a waker");
        inner.wake();
        assert_eq!(woke.load(Relaxed), 1);
    }
}
