//! A sleep with microsecond precision for the open-loop senders. tokio's timer ticks once a
//! millisecond and its epoll wait rounds up to one, so a sender woken by it sends each
//! message up to about a millisecond after its scheduled time, and every latency measured
//! from that time (the senders' rule: no coordinated omission) carries the delay: a floor
//! of ~1 ms under every server's p50 that no server causes. A timerfd armed for the exact
//! moment wakes the runtime's epoll when it is due.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;

/// One timerfd, re-armed for each sleep.
pub struct PreciseTimer {
    fd: Option<AsyncFd<OwnedFd>>,
}

impl PreciseTimer {
    /// A timer; without a timerfd (never expected on Linux) it sleeps on tokio's timer.
    pub fn new() -> Self {
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)
            .map_err(io::Error::from)
            // Deprecated for a `T` that may close its fd while registered; an `OwnedFd` moved
            // into the `AsyncFd` lives exactly as long as its registration.
            .and_then(|fd| {
                #[allow(deprecated)]
                AsyncFd::with_interest(fd, Interest::READABLE)
            });
        PreciseTimer { fd: fd.ok() }
    }

    /// Returns at `deadline` (at once if it passed).
    pub async fn sleep_until(&self, deadline: Instant) {
        let Some(fd) = &self.fd else {
            return tokio::time::sleep_until(deadline).await;
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if arm(fd, left).is_err() {
                return tokio::time::sleep_until(deadline).await;
            }
            match fd.readable().await {
                Ok(mut ready) => {
                    let mut expirations = [0u8; 8];
                    // An expiry of an earlier arming may be read here: the loop looks at the clock.
                    if let Err(rustix::io::Errno::AGAIN) = rustix::io::read(fd.get_ref(), &mut expirations) {
                        ready.clear_ready();
                    }
                }
                Err(_) => return tokio::time::sleep_until(deadline).await,
            }
        }
    }
}

/// Arms `fd` to expire once, `after` from now.
fn arm(fd: &AsyncFd<OwnedFd>, after: Duration) -> io::Result<()> {
    let value = rustix::time::Timespec::try_from(after).map_err(|_| io::Error::other("a sleep too long"))?;
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &Itimerspec { it_interval: zero, it_value: value })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_deadline_and_not_before() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let timer = PreciseTimer::new();
            assert!(timer.fd.is_some(), "a timerfd");
            for micros in [0, 300, 1_500, 2_250] {
                let deadline = Instant::now() + Duration::from_micros(micros);
                timer.sleep_until(deadline).await;
                assert!(Instant::now() >= deadline, "woke before a {micros} us deadline");
            }
        });
    }
}
