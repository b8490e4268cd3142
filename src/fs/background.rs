//! Bounded background workers: work that no request should wait for (read-ahead), run on
//! threads of its own.
//!
//! A [`Background`] holds a fixed number of threads and a queue of at most `capacity` tasks.
//! [`Background::try_spawn`] never blocks: when the queue is full the task is refused and the
//! caller does without it (a reader then decodes its chunks itself), so memory stays bounded
//! whatever the load, as with the engine's rings. A panic in a task is caught and logged; the
//! thread goes on with the next task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

type Task = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of worker threads behind a bounded task queue. Dropping it lets the threads
/// finish the queued tasks and exit (it does not wait for them).
pub struct Background {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    capacity: usize,
    queue: Mutex<Queue>,
    ready: Condvar,
    /// Signalled when a task ends and none is queued or running.
    idle: Condvar,
    /// Tasks refused because the queue was full.
    refused: AtomicU64,
    /// Tasks that panicked.
    panicked: AtomicU64,
}

struct Queue {
    tasks: VecDeque<Task>,
    /// Tasks taken off the queue and not yet ended.
    running: usize,
    closed: bool,
}

impl Background {
    /// Starts `threads` workers (at least one) named `name-N`, with room for `capacity` queued
    /// tasks (at least one).
    pub fn new(name: &str, threads: usize, capacity: usize) -> std::io::Result<Background> {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            capacity: capacity.max(1),
            queue: Mutex::new(Queue {
                tasks: VecDeque::new(),
                running: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            idle: Condvar::new(),
            refused: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
        });
        for i in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || shared.run())?;
        }
        Ok(Background { shared })
    }

    /// Queues `task` if there is room. Returns false, dropping the task unrun, when the queue is
    /// full; never waits.
    pub fn try_spawn(&self, task: impl FnOnce() + Send + 'static) -> bool {
        let mut q = self.shared.queue.lock();
        if q.closed || q.tasks.len() >= self.shared.capacity {
            drop(q);
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        q.tasks.push_back(Box::new(task));
        drop(q);
        self.shared.ready.notify_one();
        true
    }

    /// Waits until no task is queued or running (at unmount: what was handed over is done).
    pub fn wait_idle(&self) {
        let mut q = self.shared.queue.lock();
        while !q.tasks.is_empty() || q.running > 0 {
            self.shared.idle.wait(&mut q);
        }
    }

    /// Tasks refused so far because the queue was full.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Tasks that panicked so far.
    pub fn panicked(&self) -> u64 {
        self.shared.panicked.load(Ordering::Relaxed)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

impl Shared {
    fn run(&self) {
        loop {
            let task = {
                let mut q = self.queue.lock();
                loop {
                    if let Some(t) = q.tasks.pop_front() {
                        q.running += 1;
                        break t;
                    }
                    if q.closed {
                        return;
                    }
                    self.ready.wait(&mut q);
                }
            };
            if let Err(msg) = crate::panics::catch(task) {
                self.panicked.fetch_add(1, Ordering::Relaxed);
                tracing::error!("{}: a background task panicked: {msg}; going on", self.name);
            }
            let mut q = self.queue.lock();
            q.running -= 1;
            if q.running == 0 && q.tasks.is_empty() {
                self.idle.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_full_queue_refuses_instead_of_waiting() {
        let bg = Background::new("test-bg", 1, 2).unwrap();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        // Occupies the only thread until the gate opens.
        assert!(bg.try_spawn(move || {
            started_tx.send(()).unwrap();
            gate_rx.recv().unwrap();
        }));
        started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let (done_tx, done_rx) = mpsc::channel::<u32>();
        for i in 0..2 {
            let done = done_tx.clone();
            assert!(bg.try_spawn(move || done.send(i).unwrap()));
        }
        let refused = done_tx.clone();
        assert!(!bg.try_spawn(move || refused.send(99).unwrap()));
        assert_eq!(bg.refused(), 1);
        gate_tx.send(()).unwrap();
        let mut got = vec![
            done_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            done_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        ];
        got.sort();
        assert_eq!(got, vec![0, 1]);
        assert!(done_rx.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_panicking_task_does_not_stop_the_worker() {
        let bg = Background::new("test-bg", 1, 4).unwrap();
        assert!(bg.try_spawn(|| panic!("injected")));
        let (tx, rx) = mpsc::channel();
        assert!(bg.try_spawn(move || tx.send(7).unwrap()));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
        assert_eq!(bg.panicked(), 1);
    }

    #[test]
    fn wait_idle_returns_once_every_queued_task_has_ended() {
        let bg = Background::new("test-bg", 2, 8).unwrap();
        let done = Arc::new(AtomicU64::new(0));
        for _ in 0..6 {
            let done = Arc::clone(&done);
            assert!(bg.try_spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                done.fetch_add(1, Ordering::SeqCst);
            }));
        }
        bg.wait_idle();
        assert_eq!(done.load(Ordering::SeqCst), 6);
    }
}
