//! Dynamic batching for one model: `compute` calls that arrive within
//! `max_queue_delay_us` of each other, with the same inputs (names, types,
//! and every dim but the first), are stacked along dim 0, run once, and the
//! outputs split back along dim 0. Each caller gets exactly what it would
//! have had alone; a model whose dim 0 is not a batch dim is found out on
//! its first batch and runs unbatched from then on. One thread per core
//! runs batches, and each gathers at most its share of the calls in flight,
//! so that concurrent calls spread over the cores.
//!
//! Stacking does not pay for every model: a batch of 8 Magika inputs costs
//! tract more per call than 8 single runs. So the first big batches are a
//! trial (see [`Trial`]): every other one runs its calls one by one, on the
//! same thread under the same load, and unless stacked calls come out
//! cheaper, batching is turned off and the model's calls run unbatched.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use super::{Backend, Batching, NnError, NnTensor};

type Named = Vec<(String, NnTensor)>;

/// The outputs, and this caller's share of the batch's compute time.
pub type Outcome = (Result<Named, NnError>, Duration);

struct Job {
    inputs: Named,
    reply: oneshot::Sender<Outcome>,
}

/// The queue in front of one model. One thread per core takes turns to
/// gather a batch from it and then runs that batch, so a batch fills while
/// the previous ones run.
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// What the batch threads of one model share.
struct Shared {
    rx: Mutex<mpsc::Receiver<Job>>,
    /// Cleared when the model turns out not to batch along dim 0.
    batchable: AtomicBool,
    /// Calls queued or running: a thread gathers at most its share of them.
    in_flight: AtomicUsize,
    threads: usize,
    trial: Mutex<Trial>,
}

impl Shared {
    /// How many calls one thread gathers: up to `max_batch`, but no more than
    /// its share of the calls in flight (at least two, so that a lone call
    /// still waits out the delay for company). A thread that gathered up to
    /// `max_batch` left the other threads the stragglers to run one by one:
    /// 16 callers on 2 threads ran in batches of 13–15 beside batches of 1.
    fn batch_target(&self, max_batch: usize) -> usize {
        let share = self
            .in_flight
            .load(Ordering::Relaxed)
            .div_ceil(self.threads);
        max_batch.min(share.max(2))
    }

    /// Turns batching off; false if another thread already had.
    fn stop_batching(&self, model: &str) -> bool {
        crate::metrics::global().set_batching(model, false);
        self.batchable.swap(false, Ordering::Relaxed)
    }

    fn trial(&self) -> std::sync::MutexGuard<'_, Trial> {
        self.trial.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Batcher {
    pub fn start(
        name: &str,
        backend: Arc<dyn Backend>,
        max_batch: usize,
        delay: Duration,
        batching: Batching,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shared = Arc::new(Shared {
            rx: Mutex::new(rx),
            batchable: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            threads,
            trial: Mutex::new(Trial::new(max_batch, batching)),
        });
        crate::metrics::global().set_batching(name, true);
        for i in 0..threads {
            let (model, backend, shared) = (name.to_string(), backend.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("batch-{name}-{i}"))
                .spawn(move || run(&model, backend.as_ref(), &shared, max_batch, delay))?;
        }
        Ok(Self { tx, shared })
    }

    /// False once the model turned out not to batch, or not to gain from it:
    /// its calls are then run as an unbatched model's are.
    pub fn batching(&self) -> bool {
        self.shared.batchable.load(Ordering::Relaxed)
    }

    pub async fn compute(&self, inputs: Named) -> Outcome {
        let (reply, rx) = oneshot::channel();
        // In flight until this call has its answer (or is given up).
        let _in_flight = crate::cores::Counted::enter(&self.shared.in_flight);
        if self.tx.send(Job { inputs, reply }).is_err() {
            return (
                Err(NnError::runtime("the batcher has stopped")),
                Duration::ZERO,
            );
        }
        rx.await.unwrap_or_else(|_| {
            (
                Err(NnError::runtime("the batcher dropped the call")),
                Duration::ZERO,
            )
        })
    }
}

fn run(model: &str, backend: &dyn Backend, shared: &Shared, max_batch: usize, delay: Duration) {
    let mut next: Option<Job> = None;
    loop {
        // Gather a batch while holding the queue; run it after letting go.
        let mut batch = Vec::new();
        {
            let Ok(rx) = shared.rx.lock() else { return };
            let first = match next.take() {
                Some(j) => j,
                None => match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                },
            };
            batch.push(first);
            if shared.batchable.load(Ordering::Relaxed) {
                let deadline = Instant::now() + delay;
                // Re-read as calls arrive: more in flight, bigger shares.
                while batch.len() < shared.batch_target(max_batch) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(j) if compatible(&batch[0].inputs, &j.inputs) => batch.push(j),
                        // Starts this thread's next batch.
                        Ok(j) => {
                            next = Some(j);
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        if batch.len() == 1 {
            crate::metrics::global().observe_batch(model, 1);
            run_alone(backend, batch);
            continue;
        }
        let calls = batch.len();
        if shared.trial().runs_alone(calls) {
            for _ in 0..calls {
                crate::metrics::global().observe_batch(model, 1);
            }
            let (_, took) = run_alone(backend, batch);
            if let Some(verdict) = shared.trial().record(Way::Alone, calls, took) {
                verdict.apply(model, shared);
            }
            continue;
        }
        crate::metrics::global().observe_batch(model, calls);
        // The trial counts stacking and splitting against the batch; the
        // meter bills each caller its share of the model's run.
        let started = Instant::now();
        let sizes: Vec<u32> = batch.iter().map(|j| j.inputs[0].1.dimensions[0]).collect();
        let stacked = stack(batch.iter().map(|j| &j.inputs));
        let run_started = Instant::now();
        let result = backend.run(stacked);
        let share = run_started.elapsed() / calls as u32;
        match result.ok().and_then(|out| split(out, &sizes)) {
            Some(parts) => {
                let took = started.elapsed();
                for (job, part) in batch.into_iter().zip(parts) {
                    let _ = job.reply.send((Ok(part), share));
                }
                if let Some(verdict) = shared.trial().record(Way::Stacked, calls, took) {
                    verdict.apply(model, shared);
                }
            }
            None => {
                // Each alone. If they all run, dim 0 is not a batch dim for
                // this model: stop batching it. (A failure of one caller's
                // own input says nothing about the model.)
                let (all_ran, _) = run_alone(backend, batch);
                if all_ran && shared.stop_batching(model) {
                    tracing::warn!(
                        model,
                        "the model does not batch along dim 0; batching is off for it"
                    );
                }
            }
        }
    }
}

/// Runs each call by itself, in turn; whether they all ran, and the time.
fn run_alone(backend: &dyn Backend, batch: Vec<Job>) -> (bool, Duration) {
    let (mut all_ran, mut total) = (true, Duration::ZERO);
    for job in batch {
        let started = Instant::now();
        let out = backend.run(job.inputs);
        let took = started.elapsed();
        all_ran &= out.is_ok();
        total += took;
        let _ = job.reply.send((out, took));
    }
    (all_ran, total)
}

/// The trial's outcome: what a stacked call cost against a single run.
#[derive(Debug, PartialEq)]
struct Verdict {
    ratio: f64,
}

impl Verdict {
    fn pays(&self) -> bool {
        self.ratio <= Trial::MAX_RATIO
    }

    fn apply(&self, model: &str, shared: &Shared) {
        let ratio = format!("{:.2}", self.ratio);
        if self.pays() {
            tracing::info!(
                model,
                "a stacked call costs this model {ratio}× a single run: batching stays on"
            );
        } else {
            tracing::info!(
                model,
                "a stacked call costs this model {ratio}× a single run: batching is off for it"
            );
            shared.stop_batching(model);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Way {
    Stacked,
    Alone,
}

/// Whether stacking pays for a model, found out on its first batches of at
/// least [`Trial::MIN_CALLS`] calls (smaller ones say little: a batch of two
/// gains little even where batching pays). Those batches take turns to run
/// stacked and one call at a time, [`Trial::RUNS`] of each, and batching
/// stays on only if a stacked call costs at most [`Trial::MAX_RATIO`] of a
/// single run: below that gain the wait for a batch to fill is not worth it.
struct Trial {
    min_calls: usize,
    stacked: Tally,
    alone: Tally,
    decided: bool,
}

#[derive(Default)]
struct Tally {
    runs: u32,
    calls: u32,
    time: Duration,
}

impl Trial {
    const MIN_CALLS: usize = 4;
    const RUNS: u32 = 8;
    const MAX_RATIO: f64 = 0.95;

    /// With `Batching::Always` there is no trial: it is decided already.
    fn new(max_batch: usize, batching: Batching) -> Self {
        Self {
            min_calls: Self::MIN_CALLS.min(max_batch),
            stacked: Tally::default(),
            alone: Tally::default(),
            decided: batching == Batching::Always,
        }
    }

    /// Whether this batch of `calls` is to run one call at a time. The first
    /// runs stacked, which finds out soonest a model that does not batch.
    fn runs_alone(&self, calls: usize) -> bool {
        !self.decided && calls >= self.min_calls && self.alone.runs < self.stacked.runs
    }

    /// Counts a trial batch; once both ways have their runs, the verdict.
    /// `None` while undecided (or already decided).
    fn record(&mut self, way: Way, calls: usize, time: Duration) -> Option<Verdict> {
        if self.decided || calls < self.min_calls {
            return None;
        }
        let tally = match way {
            Way::Stacked => &mut self.stacked,
            Way::Alone => &mut self.alone,
        };
        tally.runs += 1;
        tally.calls += calls as u32;
        tally.time += time;
        if self.stacked.runs < Self::RUNS || self.alone.runs < Self::RUNS {
            return None;
        }
        self.decided = true;
        let per_call = |t: &Tally| t.time.as_secs_f64() / f64::from(t.calls);
        Some(Verdict {
            ratio: per_call(&self.stacked) / per_call(&self.alone),
        })
    }
}

/// Same input names in the same order, same types, same dims after the first.
fn compatible(a: &Named, b: &Named) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ta), (nb, tb))| {
            na == nb
                && ta.ty == tb.ty
                && !ta.dimensions.is_empty()
                && ta.dimensions.len() == tb.dimensions.len()
                && ta.dimensions[1..] == tb.dimensions[1..]
        })
}

/// Concatenates each input along dim 0 (row-major: the byte buffers in order).
fn stack<'a>(calls: impl Iterator<Item = &'a Named>) -> Named {
    let mut out: Named = Vec::new();
    for inputs in calls {
        if out.is_empty() {
            out = inputs.clone();
            continue;
        }
        for ((_, acc), (_, t)) in out.iter_mut().zip(inputs) {
            acc.dimensions[0] += t.dimensions[0];
            acc.data.extend_from_slice(&t.data);
        }
    }
    out
}

/// Splits every output along dim 0 into the callers' batch sizes; `None` if
/// an output's dim 0 is not the stacked batch size.
fn split(outputs: Named, sizes: &[u32]) -> Option<Vec<Named>> {
    let total: u32 = sizes.iter().sum();
    let mut parts: Vec<Named> = vec![Vec::new(); sizes.len()];
    for (name, t) in outputs {
        if t.dimensions.first() != Some(&total) || t.data.len() % total as usize != 0 {
            return None;
        }
        let row = t.data.len() / total as usize;
        let mut at = 0;
        for (part, &n) in parts.iter_mut().zip(sizes) {
            let len = row * n as usize;
            let mut dimensions = t.dimensions.clone();
            dimensions[0] = n;
            part.push((
                name.clone(),
                NnTensor {
                    dimensions,
                    ty: t.ty,
                    data: t.data[at..at + len].to_vec(),
                },
            ));
            at += len;
        }
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_calls_are_shared_out_among_the_threads() {
        let (_tx, rx) = mpsc::channel();
        let shared = Shared {
            rx: Mutex::new(rx),
            batchable: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            threads: 2,
            trial: Mutex::new(Trial::new(16, Batching::Auto)),
        };
        // (calls in flight, batch one thread gathers) with max_batch 16.
        for (in_flight, target) in [(1, 2), (2, 2), (4, 2), (5, 3), (16, 8), (17, 9), (64, 16)] {
            shared.in_flight.store(in_flight, Ordering::Relaxed);
            assert_eq!(shared.batch_target(16), target, "{in_flight} in flight");
        }
        shared.in_flight.store(64, Ordering::Relaxed);
        assert_eq!(shared.batch_target(4), 4, "never past max_batch");
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn batches_take_turns_until_the_trial_decides() {
        let mut trial = Trial::new(16, Batching::Auto);
        assert!(!trial.runs_alone(3), "too small to say anything");
        assert_eq!(trial.record(Way::Stacked, 3, ms(1)), None, "nor counted");
        let mut ways = Vec::new();
        for _ in 0..2 * Trial::RUNS {
            let way = if trial.runs_alone(8) {
                Way::Alone
            } else {
                Way::Stacked
            };
            ways.push(way);
            // A stacked call costs half a single run: batching pays.
            let took = if way == Way::Stacked { ms(40) } else { ms(80) };
            let verdict = trial.record(way, 8, took);
            assert_eq!(verdict.is_some(), ways.len() == 2 * Trial::RUNS as usize);
            if let Some(verdict) = verdict {
                assert_eq!(verdict, Verdict { ratio: 0.5 });
                assert!(verdict.pays());
            }
        }
        assert_eq!(ways[..3], [Way::Stacked, Way::Alone, Way::Stacked]);
        assert!(!trial.runs_alone(8), "decided: no more single runs");
        assert_eq!(trial.record(Way::Stacked, 8, ms(1)), None);
    }

    #[test]
    fn batching_that_does_not_pay_is_turned_off() {
        // The first: a stacked call costs 17% more than a single run, as
        // Magika's do natively.
        for (stacked, alone, stays_on) in [(94, 80, false), (80, 80, false), (75, 80, true)] {
            let mut trial = Trial::new(16, Batching::Auto);
            let mut verdict = None;
            for _ in 0..Trial::RUNS {
                assert_eq!(verdict, None);
                verdict = trial.record(Way::Stacked, 8, ms(stacked));
                assert_eq!(verdict, None);
                verdict = trial.record(Way::Alone, 8, ms(alone));
            }
            let verdict = verdict.expect("decided after both ways' runs");
            assert_eq!(
                verdict.pays(),
                stays_on,
                "stacked {stacked} against {alone}"
            );
        }
    }

    #[test]
    fn batching_always_has_no_trial() {
        let mut trial = Trial::new(16, Batching::Always);
        for _ in 0..2 * Trial::RUNS {
            assert!(!trial.runs_alone(8));
            assert_eq!(trial.record(Way::Stacked, 8, ms(100)), None);
        }
    }

    #[test]
    fn a_small_max_batch_still_gets_its_trial() {
        let trial = Trial::new(2, Batching::Auto);
        let mut stacked_once = Trial::new(2, Batching::Auto);
        stacked_once.record(Way::Stacked, 2, ms(1));
        assert!(!trial.runs_alone(2), "the first batch runs stacked");
        assert!(stacked_once.runs_alone(2));
    }
}
