//! Prometheus metrics (`GET /metrics`), with the names CONTRACTS.md lists.
//!
//! One registry for the whole process, so counters survive a hot reload and
//! instances of an old app still count against the same gauges while they
//! finish.

use std::sync::OnceLock;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Latency buckets, seconds: 100 µs up to a minute. A warm instance answers
/// in well under a millisecond, a cold start takes a few, inference tens to
/// hundreds, and deadlines default to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Batch sizes: powers of two up to 256.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    pub component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub component: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub component: String,
    pub reason: RejectReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelBackendLabels {
    pub model: String,
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelRunsOnLabels {
    pub model: String,
    pub runs_on: RunsOn,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

/// Why admission turned a request away (`edgeinfer_rejected_total{reason}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RejectReason {
    /// `max_concurrency` running and `max_queue` waiting: 429.
    QueueFull,
    /// Waited past `queue_timeout_ms`: 503.
    QueueTimeout,
    /// The engine's instance pool (shared by all components) had no free slot: 503.
    PoolExhausted,
    /// Missing, bad or revoked API key: 401.
    Unauthorized,
    /// The key may not call this component: 403.
    Forbidden,
    /// The tenant is over a quota (rate or spend): 429.
    Quota,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
            Self::PoolExhausted => "pool_exhausted",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::Quota => "quota",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for RejectReason {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(self.as_str())
    }
}

/// Where a wasi-nn `compute` ran (`edgeinfer_nn_computes_total{runs_on}`);
/// see `nn::Model::compute`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RunsOn {
    /// Inline on the core thread of the instance that called it.
    Core,
    /// On the blocking pool (a caller not on a core).
    Pool,
    /// On the model's batcher, with other calls.
    Batch,
}

impl prometheus_client::encoding::EncodeLabelValue for RunsOn {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            Self::Core => "core",
            Self::Pool => "pool",
            Self::Batch => "batch",
        })
    }
}

/// Lists a metric family even before it has a sample (prometheus-client
/// leaves empty families out), so every name is visible from the start.
#[derive(Debug)]
struct Listed<M>(M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

fn batch_histogram() -> Histogram {
    Histogram::new(BATCH_BUCKETS.iter().copied())
}

pub struct Metrics {
    registry: Registry,
    /// `edgeinfer_requests_total{component,status}`: app requests routed to a component.
    pub requests: Family<StatusLabels, Counter>,
    /// `edgeinfer_request_duration_seconds{component}`: until the response head.
    pub request_duration: HistogramFamily<ComponentLabel>,
    /// `edgeinfer_queue_duration_seconds{component}`: admission wait, admitted requests only.
    pub queue_duration: HistogramFamily<ComponentLabel>,
    /// `edgeinfer_inference_duration_seconds{model,backend}`: host-side (wasi-nn)
    /// inference, one sample per `compute`.
    pub inference_duration: HistogramFamily<ModelBackendLabels>,
    /// `edgeinfer_pending_requests{component}`: waiting in the admission queue.
    pub pending: Family<ComponentLabel, Gauge>,
    /// `edgeinfer_instances{component}`: instances alive now (until their body is done).
    pub instances: Family<ComponentLabel, Gauge>,
    /// `edgeinfer_component_loaded{component}`: 1 while its code is in memory.
    pub loaded: Family<ComponentLabel, Gauge>,
    /// `edgeinfer_cold_starts_total{component}`: loads from zero.
    pub cold_starts: Family<ComponentLabel, Counter>,
    /// `edgeinfer_cold_start_duration_seconds{component}`: how long those loads took.
    pub cold_start_duration: HistogramFamily<ComponentLabel>,
    /// `edgeinfer_rejected_total{component,reason}`.
    pub rejected: Family<RejectLabels, Counter>,
    /// `edgeinfer_batch_size{model}`: calls per wasi-nn batch (models with
    /// `max_batch_size` > 1).
    pub batch_size: HistogramFamily<ModelLabel>,
    /// `edgeinfer_reloads_total{result}`: hot reloads, `ok` or `failed`.
    pub reloads: Family<Vec<(String, String)>, Counter>,
    /// `edgeinfer_nn_model_loads_total{model}`: host-owned models loaded.
    pub nn_model_loads: Family<ModelLabel, Counter>,
    /// `edgeinfer_nn_computes_total{model,runs_on}`: wasi-nn computes by
    /// where they ran (apart from the contract's duration histogram).
    pub nn_computes: Family<ModelRunsOnLabels, Counter>,
    /// `edgeinfer_nn_batching{model}`: 1 while a model's calls are batched,
    /// 0 once its batcher found that batching does not pay (or cannot work).
    pub nn_batching: Family<ModelLabel, Gauge>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("edgeinfer");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests routed to a component, by response status",
            Listed(requests.clone()),
        );
        let request_duration: HistogramFamily<ComponentLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from receiving a request to sending its response head",
            Unit::Seconds,
            Listed(request_duration.clone()),
        );
        let queue_duration: HistogramFamily<ComponentLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "queue_duration",
            "Time an admitted request waited for a free instance",
            Unit::Seconds,
            Listed(queue_duration.clone()),
        );
        let inference_duration: HistogramFamily<ModelBackendLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "inference_duration",
            "Host-side model inference time (wasi-nn)",
            Unit::Seconds,
            Listed(inference_duration.clone()),
        );
        let pending = Family::<ComponentLabel, Gauge>::default();
        registry.register(
            "pending_requests",
            "Requests waiting in a component's admission queue",
            Listed(pending.clone()),
        );
        let instances = Family::<ComponentLabel, Gauge>::default();
        registry.register(
            "instances",
            "Instances of a component running now",
            Listed(instances.clone()),
        );
        let loaded = Family::<ComponentLabel, Gauge>::default();
        registry.register(
            "component_loaded",
            "1 while a component's compiled code is loaded, 0 once scaled to zero",
            Listed(loaded.clone()),
        );
        let cold_starts = Family::<ComponentLabel, Counter>::default();
        registry.register(
            "cold_starts",
            "Loads of a component scaled to zero",
            Listed(cold_starts.clone()),
        );
        let cold_start_duration: HistogramFamily<ComponentLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "cold_start_duration",
            "Time to load a component scaled to zero",
            Unit::Seconds,
            Listed(cold_start_duration.clone()),
        );
        let rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "rejected",
            "Requests turned away by admission control, by reason",
            Listed(rejected.clone()),
        );
        let batch_size: HistogramFamily<ModelLabel> = Family::new_with_constructor(batch_histogram);
        registry.register(
            "batch_size",
            "Requests per host-side inference batch",
            Listed(batch_size.clone()),
        );
        let reloads = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("reloads", "Hot reloads of the app", Listed(reloads.clone()));
        let nn_model_loads = Family::<ModelLabel, Counter>::default();
        registry.register(
            "nn_model_loads",
            "Host-owned (wasi-nn) models loaded",
            Listed(nn_model_loads.clone()),
        );
        let nn_computes = Family::<ModelRunsOnLabels, Counter>::default();
        registry.register(
            "nn_computes",
            "Host-side (wasi-nn) computes, by where they ran",
            Listed(nn_computes.clone()),
        );
        let nn_batching = Family::<ModelLabel, Gauge>::default();
        registry.register(
            "nn_batching",
            "1 while a model's wasi-nn calls are batched, 0 once batching is off for it",
            Listed(nn_batching.clone()),
        );
        Self {
            registry,
            requests,
            request_duration,
            queue_duration,
            inference_duration,
            pending,
            instances,
            loaded,
            cold_starts,
            cold_start_duration,
            rejected,
            batch_size,
            reloads,
            nn_model_loads,
            nn_computes,
            nn_batching,
        }
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn reject(&self, component: &str, reason: RejectReason) {
        self.rejected
            .get_or_create(&RejectLabels {
                component: component.to_string(),
                reason,
            })
            .inc();
    }

    pub fn observe_batch(&self, model: &str, size: usize) {
        self.batch_size
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .observe(size as f64);
    }

    pub fn set_batching(&self, model: &str, on: bool) {
        self.nn_batching
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .set(i64::from(on));
    }

    pub fn nn_model_loaded(&self, model: &str) {
        self.nn_model_loads
            .get_or_create(&ModelLabel {
                model: model.to_string(),
            })
            .inc();
    }

    pub fn observe_inference(
        &self,
        model: &str,
        backend: &str,
        runs_on: RunsOn,
        took: std::time::Duration,
    ) {
        self.inference_duration
            .get_or_create(&ModelBackendLabels {
                model: model.to_string(),
                backend: backend.to_string(),
            })
            .observe(took.as_secs_f64());
        self.nn_computes
            .get_or_create(&ModelRunsOnLabels {
                model: model.to_string(),
                runs_on,
            })
            .inc();
    }

    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

pub fn component(id: &str) -> ComponentLabel {
    ComponentLabel {
        component: id.to_string(),
    }
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
