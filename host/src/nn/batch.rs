//! Dynamic batching for one model: `compute` calls that arrive within
//! `max_queue_delay_us` of each other, with the same inputs (names, types,
//! and every dim but the first), are stacked along dim 0, run once, and the
//! outputs split back along dim 0. Each caller gets exactly what it would
//! have had alone; a model whose dim 0 is not a batch dim is found out on
//! its first batch and runs unbatched from then on. One thread per core
//! runs batches, and each gathers at most its share of the calls in flight,
//! so that concurrent calls spread over the cores.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use super::{Backend, NnError, NnTensor};

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
}

impl Batcher {
    pub fn start(
        name: &str,
        backend: Arc<dyn Backend>,
        max_batch: usize,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shared = Arc::new(Shared {
            rx: Mutex::new(rx),
            batchable: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            threads,
        });
        for i in 0..threads {
            let (model, backend, shared) = (name.to_string(), backend.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("batch-{name}-{i}"))
                .spawn(move || run(&model, backend.as_ref(), &shared, max_batch, delay))?;
        }
        Ok(Self { tx, shared })
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
    let batchable = &shared.batchable;
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
            if batchable.load(Ordering::Relaxed) {
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
        crate::metrics::global().observe_batch(model, batch.len());
        if batch.len() == 1 {
            let job = batch.pop().expect("one job");
            let started = Instant::now();
            let out = backend.run(job.inputs);
            let _ = job.reply.send((out, started.elapsed()));
            continue;
        }
        let sizes: Vec<u32> = batch.iter().map(|j| j.inputs[0].1.dimensions[0]).collect();
        let stacked = stack(batch.iter().map(|j| &j.inputs));
        let started = Instant::now();
        let result = backend.run(stacked);
        let took = started.elapsed();
        let share = took / batch.len() as u32;
        match result.ok().and_then(|out| split(out, &sizes)) {
            Some(parts) => {
                for (job, part) in batch.into_iter().zip(parts) {
                    let _ = job.reply.send((Ok(part), share));
                }
            }
            None => {
                // Each alone. If they all run, dim 0 is not a batch dim for
                // this model: stop batching it. (A failure of one caller's
                // own input says nothing about the model.)
                let mut all_ran = true;
                for job in batch {
                    let started = Instant::now();
                    let out = backend.run(job.inputs);
                    all_ran &= out.is_ok();
                    let _ = job.reply.send((out, started.elapsed()));
                }
                if all_ran {
                    tracing::warn!(
                        model,
                        "the model does not batch along dim 0; batching is off for it"
                    );
                    batchable.store(false, Ordering::Relaxed);
                }
            }
        }
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
        };
        // (calls in flight, batch one thread gathers) with max_batch 16.
        for (in_flight, target) in [(1, 2), (2, 2), (4, 2), (5, 3), (16, 8), (17, 9), (64, 16)] {
            shared.in_flight.store(in_flight, Ordering::Relaxed);
            assert_eq!(shared.batch_target(16), target, "{in_flight} in flight");
        }
        shared.in_flight.store(64, Ordering::Relaxed);
        assert_eq!(shared.batch_target(4), 4, "never past max_batch");
    }
}
