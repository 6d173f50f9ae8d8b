//! Dynamic batching for one model: `compute` calls that arrive within
//! `max_queue_delay_us` of each other, with the same inputs (names, types,
//! and every dim but the first), are stacked along dim 0, run once, and the
//! outputs split back along dim 0. Each caller gets exactly what it would
//! have had alone; a model whose dim 0 is not a batch dim is found out on
//! its first batch and runs unbatched from then on.

use std::sync::atomic::{AtomicBool, Ordering};
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
}

impl Batcher {
    pub fn start(
        name: &str,
        backend: Arc<dyn Backend>,
        max_batch: usize,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let rx = Arc::new(Mutex::new(rx));
        let batchable = Arc::new(AtomicBool::new(true));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..cores {
            let (model, backend, rx, batchable) = (
                name.to_string(),
                backend.clone(),
                rx.clone(),
                batchable.clone(),
            );
            std::thread::Builder::new()
                .name(format!("batch-{name}-{i}"))
                .spawn(move || run(&model, backend.as_ref(), &rx, &batchable, max_batch, delay))?;
        }
        Ok(Self { tx })
    }

    pub async fn compute(&self, inputs: Named) -> Outcome {
        let (reply, rx) = oneshot::channel();
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

fn run(
    model: &str,
    backend: &dyn Backend,
    rx: &Mutex<mpsc::Receiver<Job>>,
    batchable: &AtomicBool,
    max_batch: usize,
    delay: Duration,
) {
    let mut next: Option<Job> = None;
    loop {
        // Gather a batch while holding the queue; run it after letting go.
        let mut batch = Vec::new();
        {
            let Ok(rx) = rx.lock() else { return };
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
                while batch.len() < max_batch {
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
