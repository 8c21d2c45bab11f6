//! A created service's deadline: warnings before it, then its end. One task per created
//! service sleeps until the next of these moments (no polling); an extension moves the
//! deadline through a `watch` channel and the warnings are armed again for the new one.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Waits for the deadline, calling `warn` with the time left at each warning (`warnings`:
/// how long before the deadline each goes out). Returns true when the deadline is reached,
/// false when the sender is gone (the service ended otherwise). A warning whose moment is
/// already past when the task starts or the deadline moves is not sent.
pub async fn run(
    mut deadline: watch::Receiver<Instant>,
    warnings: &[Duration],
    mut warn: impl FnMut(Duration),
) -> bool {
    // Moments up to this one have been dealt with.
    let mut done = Instant::now();
    loop {
        let end = *deadline.borrow_and_update();
        if end <= done {
            return true;
        }
        // The next moment after `done`: a warning, or the deadline itself.
        let next = warnings
            .iter()
            .filter_map(|w| end.checked_sub(*w))
            .filter(|at| *at > done)
            .min()
            .unwrap_or(end)
            .min(end);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                if next >= end {
                    return true;
                }
                warn(end - next);
                done = next;
            }
            changed = deadline.changed() => if changed.is_err() {
                return false;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const MIN: Duration = Duration::from_secs(60);

    /// The warnings sent, each with the (paused) time it was sent at.
    type Sent = Arc<Mutex<Vec<(Duration, Instant)>>>;

    /// Runs the task; the warnings it sends go to `Sent`.
    fn start(
        deadline: watch::Receiver<Instant>,
        warnings: Vec<Duration>,
    ) -> (Sent, tokio::task::JoinHandle<bool>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        // A test's task, awaited by the test.
        #[allow(clippy::disallowed_methods)]
        let task = tokio::spawn(async move {
            run(deadline, &warnings, |left| {
                log.lock().unwrap().push((left, Instant::now()))
            })
            .await
        });
        (sent, task)
    }

    #[tokio::test(start_paused = true)]
    async fn warns_before_the_deadline_then_ends_at_it() {
        let t0 = Instant::now();
        let (_tx, rx) = watch::channel(t0 + 30 * MIN);
        let (sent, task) = start(rx, vec![10 * MIN, MIN]);
        assert!(task.await.unwrap());
        assert_eq!(Instant::now(), t0 + 30 * MIN);
        assert_eq!(
            *sent.lock().unwrap(),
            vec![(10 * MIN, t0 + 20 * MIN), (MIN, t0 + 29 * MIN)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_extension_moves_the_end_and_arms_the_warnings_again() {
        let t0 = Instant::now();
        let (tx, rx) = watch::channel(t0 + 30 * MIN);
        let (sent, task) = start(rx, vec![10 * MIN, MIN]);
        // Past the first warning: extended by 20 minutes.
        tokio::time::sleep(25 * MIN).await;
        assert_eq!(sent.lock().unwrap().len(), 1);
        tx.send(t0 + 50 * MIN).unwrap();
        assert!(task.await.unwrap());
        assert_eq!(Instant::now(), t0 + 50 * MIN);
        assert_eq!(
            *sent.lock().unwrap(),
            vec![
                (10 * MIN, t0 + 20 * MIN),
                (10 * MIN, t0 + 40 * MIN),
                (MIN, t0 + 49 * MIN)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn warnings_already_past_are_not_sent() {
        let t0 = Instant::now();
        let (_tx, rx) = watch::channel(t0 + 5 * MIN);
        let (sent, task) = start(rx, vec![10 * MIN, MIN]);
        assert!(task.await.unwrap());
        assert_eq!(*sent.lock().unwrap(), vec![(MIN, t0 + 4 * MIN)]);
    }

    #[tokio::test(start_paused = true)]
    async fn ends_without_reaching_the_deadline_when_the_service_is_gone() {
        let t0 = Instant::now();
        let (tx, rx) = watch::channel(t0 + 30 * MIN);
        let (sent, task) = start(rx, vec![MIN]);
        tokio::time::sleep(MIN).await;
        drop(tx);
        assert!(!task.await.unwrap());
        assert!(sent.lock().unwrap().is_empty());
        assert!(Instant::now() < t0 + 30 * MIN);
    }
}
