//! A small fork-join thread pool for the CPU ops.
//!
//! Why not rayon: an op lasts tens of microseconds during decoding, and pools that spin for work
//! collapse on a shared 2-vCPU machine as soon as another process is busy. This pool hands out tasks
//! from an atomic counter (so a descheduled worker costs only its current task, the others take the
//! rest), spins only briefly, and then sleeps on a condition variable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A task body: `(task_index, worker_index)`.
type TaskFn<'a> = dyn Fn(usize, usize) + Sync + 'a;

/// Pointer to the current job's closure, valid while `run` is blocked waiting for it.
#[derive(Clone, Copy)]
struct JobPtr(*const TaskFn<'static>);
// SAFETY: the closure is `Sync` and outlives every use (run() waits for all workers to finish).
unsafe impl Send for JobPtr {}

struct State {
    generation: u64,
    job: Option<JobPtr>,
    n_tasks: usize,
    busy_workers: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work_ready: Condvar,
    work_done: Condvar,
    next_task: AtomicUsize,
    generation_hint: AtomicUsize,
}

/// Fork-join pool with `n_threads - 1` workers; the calling thread is worker 0.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
}

/// How long an idle worker polls before it sleeps: long enough to bridge the gap between two
/// consecutive ops of one token, short enough not to steal a busy neighbour's core.
const SPIN: Duration = Duration::from_micros(50);

impl ThreadPool {
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                n_tasks: 0,
                busy_workers: 0,
                shutdown: false,
            }),
            work_ready: Condvar::new(),
            work_done: Condvar::new(),
            next_task: AtomicUsize::new(0),
            generation_hint: AtomicUsize::new(0),
        });
        let workers = (1..n_threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("marco-cpu-{index}"))
                    .spawn(move || worker_loop(&shared, index))
                    .expect("spawning a CPU worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
        }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(task, worker)` for every task in `0..n_tasks` and returns when all are done.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.n_threads == 1 || n_tasks == 1 {
            (0..n_tasks).for_each(|t| f(t, 0));
            return;
        }
        // SAFETY: we erase the closure's lifetime; it is only called until `busy_workers`
        // drops to zero, which we wait for below before returning.
        let job = JobPtr(unsafe { std::mem::transmute::<&TaskFn<'_>, *const TaskFn<'static>>(f) });
        {
            let mut st = self.shared.state.lock().unwrap();
            self.shared.next_task.store(0, Ordering::SeqCst);
            st.job = Some(job);
            st.n_tasks = n_tasks;
            st.generation += 1;
            st.busy_workers = self.workers.len();
            self.shared
                .generation_hint
                .store(st.generation as usize, Ordering::Release);
            self.shared.work_ready.notify_all();
        }
        drain_tasks(&self.shared, n_tasks, f, 0);
        let mut st = self.shared.state.lock().unwrap();
        while st.busy_workers > 0 {
            st = self.shared.work_done.wait(st).unwrap();
        }
        st.job = None;
    }
}

fn drain_tasks(shared: &Shared, n_tasks: usize, f: &TaskFn<'_>, worker: usize) {
    loop {
        let task = shared.next_task.fetch_add(1, Ordering::Relaxed);
        if task >= n_tasks {
            break;
        }
        f(task, worker);
    }
}

fn worker_loop(shared: &Shared, index: usize) {
    let mut seen_generation = 0u64;
    loop {
        spin_for_work(shared, seen_generation);
        let (job, n_tasks) = {
            let mut st = shared.state.lock().unwrap();
            while st.generation == seen_generation && !st.shutdown {
                st = shared.work_ready.wait(st).unwrap();
            }
            if st.shutdown {
                return;
            }
            seen_generation = st.generation;
            (
                st.job.expect("a new generation always carries a job"),
                st.n_tasks,
            )
        };
        // SAFETY: see `ThreadPool::run`.
        let f = unsafe { &*job.0 };
        drain_tasks(shared, n_tasks, f, index);
        let mut st = shared.state.lock().unwrap();
        st.busy_workers -= 1;
        if st.busy_workers == 0 {
            shared.work_done.notify_one();
        }
    }
}

fn spin_for_work(shared: &Shared, seen_generation: u64) {
    let start = Instant::now();
    while shared.generation_hint.load(Ordering::Acquire) as u64 == seen_generation {
        if start.elapsed() > SPIN {
            return;
        }
        std::hint::spin_loop();
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap().shutdown = true;
        self.shared.work_ready.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw pointer that tasks may share to write disjoint parts of one output.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(pub *mut T);
// SAFETY: users guarantee tasks write disjoint elements.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// # Safety
    /// `offset..offset+len` must be in bounds and not accessed by any other task concurrently.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(offset), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        let pool = ThreadPool::new(3);
        for n in [0, 1, 2, 7, 100] {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|t, _| {
                counts[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
    }
}
