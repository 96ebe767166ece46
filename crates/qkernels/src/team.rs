//! A small team of worker threads that stay awake between kernel calls.
//!
//! Splitting one GEMM over two cores pays off only if the second core starts at once. A rayon
//! worker that finds no work goes to sleep within microseconds, and on a virtual machine
//! waking it again (a futex wake, then an interrupt to an idle virtual CPU) takes 30-100 µs:
//! as long as a whole 128 x 768 x 768 GEMM on two threads. The team's workers instead keep
//! polling for the next job for a while after each one ([`spin_budget`], 2 ms unless
//! `QFORGE_SPIN_US` says otherwise): first with a pause hint, then yielding the CPU to anything
//! else runnable, and only then park. Back-to-back kernels (a model's layers) find them awake.
//!
//! A job is a list of task indices `0..tasks`, cut into one contiguous range per thread. Each
//! thread (the caller is one) runs its own range in order, then takes tasks from the far end
//! of the others' ranges, so a thread that starts late or runs slowly loses tasks to the
//! others. Which thread runs a task never matters to a result: every kernel that uses the team
//! gives the same output for every thread count.
//!
//! One job runs at a time. A call made while the team is busy (two threads calling kernels at
//! once, or a kernel called from inside a task) runs on rayon instead, with the same split.

use rayon::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a worker keeps looking for the next job before it parks: `QFORGE_SPIN_US`
/// microseconds if set (0 parks at once, like rayon), 2 ms otherwise.
pub fn spin_budget() -> Duration {
    static BUDGET: OnceLock<Duration> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let us = std::env::var("QFORGE_SPIN_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(2_000);
        Duration::from_micros(us)
    })
}

/// Part of the spin spent on pause hints before switching to yielding the CPU.
const HOT_SPIN: Duration = Duration::from_micros(100);

/// Runs `task(i)` exactly once for every `i` in `0..tasks`, on the calling thread and up to
/// `threads - 1` team workers. Returns when every task has finished. A panic in a task is
/// raised again on the calling thread.
pub fn for_each(threads: usize, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    let helpers = threads.min(tasks).saturating_sub(1);
    if helpers == 0 {
        (0..tasks).for_each(task);
        return;
    }
    if tasks > u32::MAX as usize {
        // More tasks than a range word holds (never the case for a kernel's blocks).
        (0..tasks).into_par_iter().with_max_len(1).for_each(task);
        return;
    }
    let team = Team::get();
    let guard = match team.busy.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => {
            (0..tasks).into_par_iter().with_max_len(1).for_each(task);
            return;
        }
    };
    team.ensure_workers(helpers);
    let threads = helpers + 1;
    let job = Job {
        task,
        ranges: (0..threads)
            .map(|p| TaskRange::new(p * tasks / threads, (p + 1) * tasks / threads))
            .collect(),
        joined: AtomicUsize::new(1),
        panicked: AtomicBool::new(false),
    };
    team.publish(&job);
    // The job must be withdrawn before this frame unwinds, so a panic here is held until then.
    let mine = catch_unwind(AssertUnwindSafe(|| job.run_tasks(0)));
    if mine.is_err() {
        job.abandon();
    }
    team.retire();
    drop(guard);
    if let Err(payload) = mine {
        std::panic::resume_unwind(payload);
    }
    if job.panicked.load(SeqCst) {
        panic!("a qkernels task panicked on a worker thread");
    }
}

/// Runs `f(i)` for every `i` in `0..tasks` as [`for_each`] does and returns the results in
/// task order.
pub fn map<T: Send>(threads: usize, tasks: usize, f: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    let slots: Vec<Mutex<Option<T>>> = (0..tasks).map(|_| Mutex::new(None)).collect();
    for_each(threads, tasks, &|i| {
        let value = f(i);
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("for_each ran every task")
        })
        .collect()
}

/// Runs `f(item)` for every item as [`for_each`] does, handing each task its own item (for
/// example the disjoint output rows it writes).
pub fn for_each_item<P: Send>(threads: usize, items: Vec<P>, f: &(dyn Fn(P) + Sync)) {
    map_items(threads, items, f);
}

/// [`for_each_item`] that returns each task's result, in item order.
pub fn map_items<P: Send, R: Send>(threads: usize, items: Vec<P>, f: &(dyn Fn(P) -> R + Sync)) -> Vec<R> {
    let slots: Vec<Mutex<Option<P>>> = items.into_iter().map(|p| Mutex::new(Some(p))).collect();
    map(threads, slots.len(), &|i| {
        let item = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
        f(item.expect("each task runs once"))
    })
}

/// One published job: the caller's closure and each thread's range of tasks.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    /// Range `p` belongs to participant `p`; the caller is participant 0.
    ranges: Vec<TaskRange>,
    /// Participants so far; a worker arriving when all ranges have owners stays out.
    joined: AtomicUsize,
    panicked: AtomicBool,
}

impl Job<'_> {
    /// Runs participant `me`'s range from the front, then the others' from the back.
    fn run_tasks(&self, me: usize) {
        while let Some(i) = self.ranges[me].take_front() {
            (self.task)(i);
        }
        let n = self.ranges.len();
        for other in (1..n).map(|d| (me + d) % n) {
            while let Some(i) = self.ranges[other].take_back() {
                (self.task)(i);
            }
        }
    }

    /// Drops every task not yet started (after a panic the result is lost anyway).
    fn abandon(&self) {
        for range in &self.ranges {
            while range.take_back().is_some() {}
        }
    }
}

/// Tasks `front..back` not yet taken, packed in one word so both ends move atomically.
struct TaskRange(AtomicU64);

impl TaskRange {
    fn new(front: usize, back: usize) -> TaskRange {
        TaskRange(AtomicU64::new(((front as u64) << 32) | back as u64))
    }

    fn take_front(&self) -> Option<usize> {
        self.take(|front, _| front)
    }

    fn take_back(&self) -> Option<usize> {
        self.take(|_, back| back - 1)
    }

    /// Claims the task `pick(front, back)` at one end of a non-empty range.
    fn take(&self, pick: impl Fn(u64, u64) -> u64) -> Option<usize> {
        let mut word = self.0.load(SeqCst);
        loop {
            let (front, back) = (word >> 32, word & 0xffff_ffff);
            if front >= back {
                return None;
            }
            let i = pick(front, back);
            let next = if i == front {
                ((front + 1) << 32) | back
            } else {
                (front << 32) | (back - 1)
            };
            match self.0.compare_exchange_weak(word, next, SeqCst, SeqCst) {
                Ok(_) => return Some(i as usize),
                Err(seen) => word = seen,
            }
        }
    }
}

struct Worker {
    thread: Thread,
    parked: AtomicBool,
}

struct Team {
    /// Held by the caller for the whole job: one job at a time.
    busy: Mutex<()>,
    /// The current job, or null. Points into the caller's stack frame while it is set.
    job: AtomicPtr<Job<'static>>,
    /// Bumped for every job so that a worker notices a new one.
    generation: AtomicU64,
    /// Workers between announcing themselves and leaving a job; the caller waits for zero.
    active: AtomicUsize,
    workers: Mutex<Vec<&'static Worker>>,
}

impl Team {
    fn get() -> &'static Team {
        static TEAM: OnceLock<Team> = OnceLock::new();
        TEAM.get_or_init(|| Team {
            busy: Mutex::new(()),
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            workers: Mutex::new(Vec::new()),
        })
    }

    /// Starts workers until there are at least `count`.
    fn ensure_workers(&'static self, count: usize) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        while workers.len() < count {
            let slot: &'static OnceLock<&'static Worker> = Box::leak(Box::new(OnceLock::new()));
            let spawned = thread::Builder::new()
                .name(format!("qkernels-{}", workers.len()))
                .spawn(move || {
                    let me = *slot.wait();
                    self.work(me)
                });
            match spawned {
                Ok(handle) => {
                    let worker: &'static Worker = Box::leak(Box::new(Worker {
                        thread: handle.thread().clone(),
                        parked: AtomicBool::new(false),
                    }));
                    let _ = slot.set(worker);
                    workers.push(worker);
                }
                // The caller runs whatever no worker claims, so fewer workers only means
                // less parallelism.
                Err(_) => break,
            }
        }
    }

    fn publish(&self, job: &Job<'_>) {
        // Lifetime erased: `retire` clears the pointer and waits until no worker can still be
        // using it before `for_each` returns and the job goes out of scope.
        let ptr = job as *const Job<'_> as *mut Job<'static>;
        self.job.store(ptr, SeqCst);
        self.generation.fetch_add(1, SeqCst);
        for worker in self.workers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if worker.parked.load(SeqCst) {
                worker.thread.unpark();
            }
        }
    }

    /// Withdraws the job and waits for every worker that may hold it to let go.
    fn retire(&self) {
        self.job.store(std::ptr::null_mut(), SeqCst);
        let mut polls = 0u32;
        while self.active.load(SeqCst) != 0 {
            polls = polls.wrapping_add(1);
            // A worker descheduled inside its job may need this CPU to finish.
            if polls.is_multiple_of(64) {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    fn work(&self, me: &Worker) -> ! {
        let mut seen = self.generation.load(SeqCst);
        loop {
            seen = self.wait_for_job(me, seen);
            // Announce first, then read the pointer: if the pointer is still set here, the
            // caller's `retire` (which clears it, then reads `active`) will see us and wait.
            self.active.fetch_add(1, SeqCst);
            let ptr = self.job.load(SeqCst);
            if !ptr.is_null() {
                // SAFETY: a non-null pointer read after announcing ourselves in `active` stays
                // valid until we decrement `active` (see `retire`).
                let job = unsafe { &*ptr };
                let seat = job.joined.fetch_add(1, SeqCst);
                if seat < job.ranges.len() && catch_unwind(AssertUnwindSafe(|| job.run_tasks(seat))).is_err() {
                    job.panicked.store(true, SeqCst);
                    job.abandon();
                }
            }
            self.active.fetch_sub(1, SeqCst);
        }
    }

    /// Returns the generation of a job newer than `seen`: spins, then yields, then parks.
    fn wait_for_job(&self, me: &Worker, seen: u64) -> u64 {
        let start = Instant::now();
        let budget = spin_budget();
        let mut polls = 0u32;
        loop {
            let now = self.generation.load(SeqCst);
            if now != seen {
                return now;
            }
            polls = polls.wrapping_add(1);
            if !polls.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let waited = start.elapsed();
            if waited < HOT_SPIN {
                std::hint::spin_loop();
            } else if waited < budget {
                thread::yield_now();
            } else {
                return self.park_until_job(me, seen);
            }
        }
    }

    fn park_until_job(&self, me: &Worker, seen: u64) -> u64 {
        loop {
            // Flag first, then re-check: `publish` bumps the generation, then reads the flag,
            // so either it unparks us or we see the new generation here.
            me.parked.store(true, SeqCst);
            if self.generation.load(SeqCst) == seen {
                thread::park();
            }
            me.parked.store(false, SeqCst);
            let now = self.generation.load(SeqCst);
            if now != seen {
                return now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once_for_any_thread_count() {
        for threads in 1..5 {
            for tasks in [0, 1, 2, 3, 7, 64] {
                let counts: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
                for_each(threads, tasks, &|i| {
                    counts[i].fetch_add(1, SeqCst);
                });
                assert!(
                    counts.iter().all(|c| c.load(SeqCst) == 1),
                    "{threads} threads, {tasks} tasks"
                );
            }
        }
    }

    #[test]
    fn each_item_reaches_one_task() {
        let mut data = vec![0u32; 100];
        for_each_item(3, data.chunks_mut(7).enumerate().collect(), &|(i, chunk)| {
            chunk.iter_mut().for_each(|v| *v += i as u32 + 1)
        });
        assert!(data.iter().enumerate().all(|(j, &v)| v == (j / 7) as u32 + 1));
    }

    #[test]
    fn map_returns_results_in_task_order() {
        let got = map(3, 10, &|i| i * i);
        assert_eq!(got, (0..10).map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn concurrent_and_nested_calls_complete() {
        let total = AtomicUsize::new(0);
        (0..8usize).into_par_iter().for_each(|_| {
            for_each(2, 4, &|_| {
                // A nested call finds the team busy and runs on rayon.
                for_each(2, 3, &|_| {
                    total.fetch_add(1, SeqCst);
                });
            });
        });
        assert_eq!(total.load(SeqCst), 8 * 4 * 3);
    }

    #[test]
    fn a_panic_in_any_task_reaches_the_caller() {
        for bad in [0, 63] {
            let result = std::panic::catch_unwind(|| {
                for_each(2, 64, &|i| {
                    if i == bad {
                        panic!("task {bad}");
                    }
                })
            });
            assert!(result.is_err());
        }
        // The team still works afterwards.
        assert_eq!(map(2, 4, &|i| i + 1), vec![1, 2, 3, 4]);
    }

    #[test]
    fn workers_wake_from_parking() {
        // Longer than any spin budget used in tests, so the worker has parked.
        for_each(2, 2, &|_| {});
        thread::sleep(spin_budget() + Duration::from_millis(5));
        let got = map(2, 8, &|i| i);
        assert_eq!(got, (0..8).collect::<Vec<_>>());
    }
}
