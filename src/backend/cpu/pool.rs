//! A small fork-join thread pool for the CPU ops.
//!
//! Why not rayon or OpenMP-style pools: an op lasts tens of microseconds while decoding, and pools
//! that spin, or that wait for every worker at a barrier, collapse on a shared 2-vCPU machine as
//! soon as another process is busy: each op then waits for a descheduled worker. Here:
//! - each thread owns a contiguous share of the tasks and claims them in order from an atomic
//!   word, so the weight rows it reads are one forward stream for the prefetchers; a thread
//!   that runs out takes tasks one by one from the end of the largest share left, so whoever
//!   runs does the work, and a worker that was descheduled finds its share taken and costs
//!   nothing;
//! - the caller waits for *tasks* to complete, not for workers to check in;
//! - a worker reads the job's closure only after it has claimed a task, which keeps that job
//!   alive, so a late worker can never run a task with an older job's closure (the words'
//!   generation only keeps late workers from claiming tasks of jobs they did not see);
//! - idle workers spin only briefly, then sleep on a condition variable;
//! - when the workers stop paying off (they hold tasks but keep losing their core to a busy
//!   neighbour), the pool runs alone for a while, then tries its workers again.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A task body: `(task_index, worker_index)`.
type TaskFn<'a> = dyn Fn(usize, usize) + Sync + 'a;

/// Pointer to the current job's closure; valid while its generation's tasks are unfinished.
struct JobPtr(*const TaskFn<'static>);

struct Slot {
    generation: u32,
    shutdown: bool,
}

/// A value on cache lines of its own (two: the adjacent-line prefetcher fetches lines in
/// pairs), so that one thread's claims do not take the line of another's word away.
#[repr(align(128))]
struct Padded<T>(T);

struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
    /// The current job's generation (what polling workers watch).
    announced: AtomicU32,
    /// The current job's closure, published before its shares (see [`run_tasks`]).
    job: AtomicPtr<JobPtr>,
    /// Per thread, its share of the current job's tasks: see [`Share`].
    shares: Box<[Padded<AtomicU64>]>,
    /// Tasks of the current job finished so far.
    done: Padded<AtomicUsize>,
    /// Workers asleep on `wake` (changed under `slot`'s lock), so that a job wakes them with
    /// a system call only when some are (most jobs of a token find them still polling).
    sleepers: AtomicUsize,
}

/// Fork-join pool with `n_threads - 1` workers; the calling thread is worker 0.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    generation: std::cell::Cell<u32>,
    stalls: std::cell::Cell<StallWindow>,
}

/// Whether the workers pay off, measured over windows of `WINDOW_JOBS` jobs of more than
/// one task (the same mix of ops either way: decoding repeats the same jobs every token); a
/// window with the workers may end sooner, as a loss (`EARLY_JOBS`).
#[derive(Clone, Copy, Default)]
struct StallWindow {
    jobs: u32,
    total: Duration,
    /// Per job: the caller's own running time scaled to all of the job's tasks.
    alone: Duration,
    /// Until when jobs run on the caller's thread alone (then the window runs on until it is
    /// full, so each solo stretch measures one whole window).
    solo_until: Option<Instant>,
    /// How long the solo window just before took (for the next window with the workers).
    last_solo: Option<Duration>,
    /// Windows in a row where the workers did not pay off (each doubles the next solo
    /// stretch).
    stalled_windows: u32,
}

/// Jobs per measurement window.
const WINDOW_JOBS: u32 = 256;
/// A window with the workers ends early, as a loss, when after at least this many jobs their
/// total time has reached the sum of the caller's own times scaled to all their tasks
/// (`StallWindow::alone`; checked after every job from then on). On a quiet machine two
/// threads take 0.45-0.57 of that sum, and a biased estimate (a prompt's attention, whose first
/// tasks are the cheap ones) about 0.75; beside a busy neighbour a descheduled worker's task
/// stalls whole jobs, and a full window of that (about two decoded tokens, after every solo
/// stretch) cost 2-5% of the decoding speed.
const EARLY_JOBS: u32 = 32;
/// With the workers, a window must take less than this share of the last solo window.
const PAYOFF: f64 = 0.97;
/// Before any solo window, an estimate decides when to try one: the caller's own time per task
/// times all tasks. It runs high (with the workers, the caller shares the memory bandwidth),
/// so two threads on a quiet machine measure about 0.5 of it, and a trial is cheap.
const TRY_SOLO: f64 = 0.65;
/// Jobs then run alone for at least this long (a few decoded tokens) before the workers are
/// tried again; each window in a row where they still do not pay off doubles it, up to
/// `SOLO << MAX_BACKOFF` (1.6 s), so a neighbour that stays busy costs few trial windows.
const SOLO: Duration = Duration::from_millis(50);
const MAX_BACKOFF: u32 = 5;

/// How long an idle worker polls before it sleeps: long enough to bridge the gap between two
/// consecutive ops of one token, short enough not to take a busy neighbour's core for long.
const SPIN: Duration = Duration::from_micros(30);

/// How long the caller polls for a worker's last tasks before it yields its core: a couple of
/// a decoded token's tasks (at least 64 KB of weights each, about 2 µs; see the CPU backend).
const SPIN_DONE: Duration = Duration::from_micros(5);

impl ThreadPool {
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                generation: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            announced: AtomicU32::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            shares: (0..n_threads).map(|_| Padded(AtomicU64::new(0))).collect(),
            done: Padded(AtomicUsize::new(0)),
            sleepers: AtomicUsize::new(0),
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
            generation: std::cell::Cell::new(0),
            stalls: std::cell::Cell::new(StallWindow::default()),
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
        if n_tasks > Share::MAX_TASKS {
            for base in (0..n_tasks).step_by(Share::MAX_TASKS) {
                let n = Share::MAX_TASKS.min(n_tasks - base);
                self.run(n, &|t, w| f(base + t, w));
            }
            return;
        }
        if self.n_threads == 1 || n_tasks == 1 {
            (0..n_tasks).for_each(|t| f(t, 0));
            return;
        }
        if self.stalls.get().solo_until.is_some() {
            let started = Instant::now();
            (0..n_tasks).for_each(|t| f(t, 0));
            let total = started.elapsed();
            self.note_job(total, total);
            return;
        }
        let started = Instant::now();
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        // SAFETY: the lifetime is erased; a worker calls the closure only for a task of this
        // job that it has claimed, and we return only after every task has completed.
        let job = JobPtr(unsafe { std::mem::transmute::<&TaskFn<'_>, *const TaskFn<'static>>(f) });
        let s = &self.shared;
        s.done.0.store(0, Ordering::Relaxed);
        let sleeping = {
            let mut slot = s.slot.lock().unwrap();
            slot.generation = generation;
            s.job
                .store(std::ptr::from_ref(&job).cast_mut(), Ordering::Release);
            // The caller's share (the first) is the one rounded up: it is sure to run.
            let n = s.shares.len();
            for (w, share) in s.shares.iter().enumerate() {
                let range = (w * n_tasks).div_ceil(n)..((w + 1) * n_tasks).div_ceil(n);
                share
                    .0
                    .store(Share::pack(generation, range), Ordering::Release);
            }
            s.announced.store(generation, Ordering::Release);
            // A worker that has not seen this generation is polling, or counted here: it
            // counts itself under this lock before it sleeps.
            s.sleepers.load(Ordering::Relaxed)
        };
        if sleeping > 0 {
            s.wake.notify_all();
        }
        let own_tasks = run_tasks(s, generation, 0, |task| f(task, 0));
        // Alone, the caller would have needed about its own time per task for all of them.
        // (Its share is the job's first tasks, which may be cheaper, as the first tokens of a
        // prompt's attention are: then this runs low. It starts a solo trial sooner, whose
        // measured window then decides, or, far off, ends a window early: see EARLY_JOBS.)
        let alone = started
            .elapsed()
            .mul_f64(n_tasks as f64 / own_tasks.max(1) as f64);
        let waiting = Instant::now();
        while s.done.0.load(Ordering::Acquire) < n_tasks {
            // A worker holds the last tasks: poll while they are likely still running on
            // their core, then give the core to a worker that may need it.
            if waiting.elapsed() < SPIN_DONE {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        s.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        // (A caller that ran no task has no estimate: count the job as neutral.)
        let total = started.elapsed();
        self.note_job(total, if own_tasks == 0 { total } else { alone });
    }

    /// Adds one job to the window. A full window run with the workers switches to solo if
    /// they did not pay off, and so does one that is clearly losing (`EARLY_JOBS`); a full
    /// solo window switches back once its time is up.
    fn note_job(&self, total: Duration, alone: Duration) {
        let mut w = self.stalls.get();
        w.jobs += 1;
        w.total += total;
        w.alone += alone;
        let losing = w.solo_until.is_none() && w.jobs >= EARLY_JOBS && w.total >= w.alone;
        if w.jobs >= WINDOW_JOBS || losing {
            let now = Instant::now();
            let secs = w.total.as_secs_f64();
            match w.solo_until {
                Some(until) => {
                    w.last_solo = Some(w.total);
                    if now >= until {
                        w.solo_until = None;
                    }
                }
                None => {
                    // The solo window serves the trial right after it only: later windows may
                    // hold other work (a prompt's jobs, not a token's).
                    let last_solo = w.last_solo.take();
                    let paid_off = !losing
                        && match last_solo {
                            Some(solo) => secs < PAYOFF * solo.as_secs_f64(),
                            None => secs < TRY_SOLO * w.alone.as_secs_f64(),
                        };
                    if paid_off {
                        w.stalled_windows = 0;
                    } else {
                        let stretch = SOLO * (1 << w.stalled_windows.min(MAX_BACKOFF));
                        w.solo_until = Some(now + stretch);
                        w.stalled_windows += 1;
                    }
                }
            }
            (w.jobs, w.total, w.alone) = (0, Duration::ZERO, Duration::ZERO);
        }
        self.stalls.set(w);
    }
}

/// Claims and runs tasks of `generation` until none are left, its own share first; returns
/// how many it ran.
fn run_tasks(s: &Shared, generation: u32, worker: usize, run: impl Fn(usize)) -> usize {
    let mut ran = 0;
    while let Some(task) = Share::claim_front(&s.shares[worker].0, generation)
        .or_else(|| Share::steal(&s.shares, generation))
    {
        run(task);
        s.done.0.fetch_add(1, Ordering::AcqRel);
        ran += 1;
    }
    ran
}

/// Runs task `task` of the job that published its closure: called right after the task was
/// claimed. That job cannot finish before this task does, and the next cannot be published
/// before it finishes, so the closure read here is that job's and lives until the call ends,
/// whatever generation the worker thought it was claiming under (the words' 24 bits of it
/// wrap after 2^24 jobs).
fn run_claimed(s: &Shared, task: usize, worker: usize) {
    let job = s.job.load(Ordering::Acquire);
    debug_assert!(
        !job.is_null(),
        "internal: a task claimed with no job published"
    );
    // SAFETY: see above; the claim's acquire of the share word, published after the closure,
    // makes the closure visible.
    unsafe { (*(*job).0)(task, worker) }
}

/// A thread's share of a job's tasks in one atomic word: the job's generation (its low 24
/// bits), the next task and the end of the share (20 bits each). The owner takes tasks from
/// the front, others from the back, both by compare-and-swap on the whole word.
struct Share;

impl Share {
    /// Jobs with more tasks run in rounds of this many.
    const MAX_TASKS: usize = (1 << 20) - 1;
    const MASK: u64 = (1 << 20) - 1;

    fn pack(generation: u32, range: std::ops::Range<usize>) -> u64 {
        (generation as u64 & 0xFF_FFFF) << 40 | (range.start as u64) << 20 | range.end as u64
    }

    /// (next, end) of `word` if it belongs to `generation`.
    fn unpack(word: u64, generation: u32) -> Option<(u64, u64)> {
        ((word >> 40) == generation as u64 & 0xFF_FFFF)
            .then_some(((word >> 20) & Self::MASK, word & Self::MASK))
    }

    fn claim_front(share: &AtomicU64, generation: u32) -> Option<usize> {
        let mut cur = share.load(Ordering::Acquire);
        loop {
            let (next, end) = Self::unpack(cur, generation)?;
            if next >= end {
                return None;
            }
            match share.compare_exchange_weak(
                cur,
                cur + (1 << 20),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(next as usize),
                Err(actual) => cur = actual,
            }
        }
    }

    /// The last task of the largest share left.
    fn steal(shares: &[Padded<AtomicU64>], generation: u32) -> Option<usize> {
        loop {
            let (share, cur, _) = shares
                .iter()
                .filter_map(|sh| {
                    let sh = &sh.0;
                    let cur = sh.load(Ordering::Acquire);
                    let (next, end) = Self::unpack(cur, generation)?;
                    (next < end).then_some((sh, cur, end - next))
                })
                .max_by_key(|&(_, _, left)| left)?;
            if share
                .compare_exchange(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(((cur & Self::MASK) - 1) as usize);
            }
        }
    }
}

fn worker_loop(s: &Shared, index: usize) {
    let mut seen = 0u32;
    loop {
        spin_for_work(s, seen);
        let generation = {
            let mut slot = s.slot.lock().unwrap();
            while slot.generation == seen && !slot.shutdown {
                s.sleepers.fetch_add(1, Ordering::Relaxed);
                slot = s.wake.wait(slot).unwrap();
                s.sleepers.fetch_sub(1, Ordering::Relaxed);
            }
            if slot.shutdown {
                return;
            }
            seen = slot.generation;
            slot.generation
        };
        run_tasks(s, generation, index, |task| run_claimed(s, task, index));
    }
}

fn spin_for_work(s: &Shared, seen: u32) {
    let start = Instant::now();
    while s.announced.load(Ordering::Relaxed) == seen {
        if start.elapsed() > SPIN {
            return;
        }
        std::hint::spin_loop();
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.slot.lock().unwrap().shutdown = true;
        self.shared.wake.notify_all();
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

    /// A share claimed from the front by its owner and from the back by others yields each
    /// task once, and nothing under another generation.
    #[test]
    fn shares_give_each_task_once() {
        let shares: Box<[Padded<AtomicU64>]> = [0..3, 3..7]
            .into_iter()
            .map(|r| Padded(AtomicU64::new(Share::pack(9, r))))
            .collect();
        assert_eq!(Share::claim_front(&shares[0].0, 8), None);
        assert_eq!(Share::steal(&shares, 10), None);
        assert_eq!(Share::claim_front(&shares[0].0, 9), Some(0));
        // The largest share left loses its last task.
        assert_eq!(Share::steal(&shares, 9), Some(6));
        let mut got = vec![0, 6];
        while let Some(t) = Share::claim_front(&shares[1].0, 9) {
            got.push(t);
        }
        while let Some(t) = Share::steal(&shares, 9) {
            got.push(t);
        }
        got.sort();
        assert_eq!(got, (0..7).collect::<Vec<_>>());
        // Generations wrap at 24 bits in the word, and match as such.
        let word = AtomicU64::new(Share::pack(u32::MAX, 5..6));
        assert_eq!(Share::claim_front(&word, u32::MAX), Some(5));
    }

    /// Runs `n` tasks on `pool`, each first doing `work(task)`, and checks each ran once.
    fn assert_each_task_runs_once(pool: &ThreadPool, n: usize, work: impl Fn(usize) + Sync) {
        let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        pool.run(n, &|t, _| {
            work(t);
            counts[t].fetch_add(1, Ordering::Relaxed);
        });
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    /// More tasks than a share word holds run in rounds: still each once.
    #[test]
    fn jobs_beyond_a_word_run_in_rounds() {
        assert_each_task_runs_once(&ThreadPool::new(2), Share::MAX_TASKS + 5, |_| {});
    }

    /// Fewer tasks than threads: the caller's share is not the empty one.
    #[test]
    fn the_caller_gets_a_task_when_tasks_are_fewer_than_threads() {
        let pool = ThreadPool::new(3);
        let ran_by_caller = AtomicUsize::new(0);
        pool.run(2, &|_, w| {
            if w == 0 {
                ran_by_caller.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(5));
        });
        assert!(ran_by_caller.load(Ordering::Relaxed) >= 1);
    }

    /// Uneven tasks make the threads take from each other's shares: still each once.
    #[test]
    fn uneven_tasks_each_run_once() {
        let pool = ThreadPool::new(2);
        for n in [2, 3, 17, 300] {
            assert_each_task_runs_once(&pool, n, |t| {
                if t < n / 2 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
    }

    #[test]
    fn every_task_runs_once() {
        let pool = ThreadPool::new(3);
        for n in [0, 1, 2, 7, 100, 1000] {
            assert_each_task_runs_once(&pool, n, |_| {});
        }
    }

    /// The switch between the workers and solo: a window whose estimate says the workers do
    /// not pay off starts a solo stretch; a full solo window after its time is up sets the
    /// reference and goes back to the workers; with the workers slower than that reference
    /// the next stretch is twice as long; faster, the pool keeps its workers.
    #[test]
    fn workers_that_do_not_pay_off_switch_to_solo_and_back() {
        let pool = ThreadPool::new(2);
        // Jobs of one kind until the window closes; returns how many it took.
        let window = |total_us: u64, alone_us: u64| {
            let (t, a) = (
                Duration::from_micros(total_us),
                Duration::from_micros(alone_us),
            );
            let mut jobs = 0;
            loop {
                pool.note_job(t, a);
                jobs += 1;
                if pool.stalls.get().jobs == 0 {
                    return jobs;
                }
            }
        };
        let solo_left = || {
            let until = pool.stalls.get().solo_until;
            until.map(|u| u.saturating_duration_since(Instant::now()))
        };
        // Two threads at half the caller's estimate: they pay off.
        window(50, 100);
        assert_eq!(solo_left(), None);
        // At the estimate: try solo, as soon as the window shows it.
        assert_eq!(window(100, 100), EARLY_JOBS);
        assert!(solo_left().is_some_and(|l| l > SOLO / 2 && l <= SOLO));
        // Solo jobs run on the caller alone.
        let on_worker = AtomicUsize::new(0);
        pool.run(64, &|_, w| {
            on_worker.fetch_add(usize::from(w != 0), Ordering::Relaxed);
        });
        assert_eq!(
            on_worker.load(Ordering::Relaxed),
            0,
            "a solo job ran on a worker"
        );
        // A full solo window before the time is up stays solo; after it, back to the workers.
        window(80, 80);
        assert!(solo_left().is_some());
        std::thread::sleep(SOLO);
        window(80, 80);
        assert_eq!(solo_left(), None);
        assert_eq!(
            pool.stalls.get().last_solo,
            Some(Duration::from_micros(80 * 256))
        );
        // Slower than solo with the workers (not slower than the estimate): a full window,
        // then a stretch twice as long.
        assert_eq!(window(90, 200), WINDOW_JOBS);
        assert!(solo_left().is_some_and(|l| l > SOLO && l <= 2 * SOLO));
        std::thread::sleep(2 * SOLO);
        window(80, 80);
        assert_eq!(solo_left(), None);
        // Faster: the workers stay, and the backoff resets.
        assert_eq!(window(60, 200), WINDOW_JOBS);
        assert_eq!(solo_left(), None);
        assert_eq!(pool.stalls.get().stalled_windows, 0);
    }

    #[test]
    fn many_short_jobs_in_a_row() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for _ in 0..20_000 {
            pool.run(3, &|_, _| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 60_000);
    }
}
