//! Pricing (`[billing]` in edgeinfer.toml) and the reports made from the
//! ledger. Money is `rust_decimal::Decimal` throughout, never a float: a
//! call's amount is fixed when it is metered, rounded half-to-even to
//! [`AMOUNT_SCALE`] places, and a report's totals are exact sums of those.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ledger::{MeterRecord, Outcome};

/// Decimal places kept in every amount and in GB-seconds.
pub const AMOUNT_SCALE: u32 = 12;

/// `[billing]`: rates for every component, and per-component overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    #[serde(default = "usd")]
    pub currency: String,
    #[serde(flatten)]
    pub rates: RateOverrides,
    /// `[billing.component.NAME]`: any rate, for that component only.
    #[serde(default)]
    pub component: BTreeMap<String, RateOverrides>,
}

fn usd() -> String {
    "USD".into()
}

/// Rates as written; unset ones fall back (component → `[billing]` → 0).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverrides {
    #[serde(default, deserialize_with = "opt_decimal")]
    pub per_call: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_decimal")]
    pub per_gb_second: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_decimal")]
    pub per_million_fuel: Option<Decimal>,
    #[serde(default)]
    pub per_nn_compute_ms: Option<NnRates>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NnRates {
    #[serde(default, deserialize_with = "opt_decimal")]
    pub cpu: Option<Decimal>,
    #[serde(default, deserialize_with = "opt_decimal")]
    pub gpu: Option<Decimal>,
}

/// The rates in force for one component.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    pub currency: String,
    pub per_call: Decimal,
    pub per_gb_second: Decimal,
    pub per_million_fuel: Decimal,
    pub per_nn_compute_ms_cpu: Decimal,
    pub per_nn_compute_ms_gpu: Decimal,
}

impl BillingConfig {
    /// Whether any rate charges for fuel, so fuel must be counted.
    pub fn prices_fuel(&self) -> bool {
        std::iter::once(&self.rates)
            .chain(self.component.values())
            .any(|r| r.per_million_fuel.is_some_and(|p| p > Decimal::ZERO))
    }

    pub fn rates(&self, component: &str) -> Rates {
        let over = self.component.get(component);
        let pick = |f: fn(&RateOverrides) -> Option<Decimal>| {
            over.and_then(f).or(f(&self.rates)).unwrap_or_default()
        };
        let nn = |f: fn(&NnRates) -> Option<Decimal>| {
            over.and_then(|o| o.per_nn_compute_ms.as_ref().and_then(f))
                .or(self.rates.per_nn_compute_ms.as_ref().and_then(f))
                .unwrap_or_default()
        };
        Rates {
            currency: self.currency.clone(),
            per_call: pick(|r| r.per_call),
            per_gb_second: pick(|r| r.per_gb_second),
            per_million_fuel: pick(|r| r.per_million_fuel),
            per_nn_compute_ms_cpu: nn(|n| n.cpu),
            per_nn_compute_ms_gpu: nn(|n| n.gpu),
        }
    }
}

/// Accepts a TOML float (`0.0000002`), integer or string (`"0.0000002"`).
/// A float is read back through its shortest decimal form, which is the
/// text the user wrote.
fn opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(i64),
        Float(f64),
        Text(String),
    }
    let text = match Num::deserialize(d)? {
        Num::Int(i) => i.to_string(),
        Num::Float(f) => format!("{f}"),
        Num::Text(s) => s,
    };
    let v: Decimal = text
        .trim()
        .parse()
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a decimal amount: {e}")))?;
    if v.is_sign_negative() {
        return Err(serde::de::Error::custom("a rate may not be negative"));
    }
    Ok(Some(v))
}

fn round(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(AMOUNT_SCALE, RoundingStrategy::MidpointNearestEven)
        .normalize()
}

/// Billed time: wall time rounded up to the next millisecond, as Lambda bills.
pub fn billed_ms(wall_us: u64) -> u64 {
    wall_us.div_ceil(1000)
}

/// Peak memory × billed time, in GiB-seconds, rounded to [`AMOUNT_SCALE`] places.
pub fn gb_seconds(max_memory_bytes: u64, billed_ms: u64) -> Decimal {
    let bytes_ms = Decimal::from(max_memory_bytes) * Decimal::from(billed_ms);
    round(bytes_ms / Decimal::from(1u64 << 30) / Decimal::from(1000))
}

/// What one call costs: per call + per GB-second + per million fuel + per
/// nn-compute millisecond (CPU or GPU rate), rounded to [`AMOUNT_SCALE`]
/// places. Rejected calls cost nothing.
pub fn amount(rates: &Rates, r: &MeterRecord, gpu: bool) -> Decimal {
    if !r.outcome.billable() {
        return Decimal::ZERO;
    }
    let nn_rate = if gpu {
        rates.per_nn_compute_ms_gpu
    } else {
        rates.per_nn_compute_ms_cpu
    };
    round(
        rates.per_call
            + rates.per_gb_second * gb_seconds(r.max_memory_bytes, r.billed_ms)
            + rates.per_million_fuel * Decimal::from(r.fuel) / Decimal::from(1_000_000)
            + nn_rate * Decimal::from(r.nn_compute_us) / Decimal::from(1000),
    )
}

/// One report line: a tenant's use of one component and model.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LineItem {
    pub tenant: String,
    pub component: String,
    pub model: String,
    /// Billed calls (everything but rejections).
    pub calls: u64,
    pub rejected: u64,
    pub wall_ms: Decimal,
    pub billed_ms: u64,
    pub gb_seconds: Decimal,
    pub fuel: u64,
    pub nn_compute_ms: Decimal,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub amount: Decimal,
}

impl LineItem {
    fn add(&mut self, r: &MeterRecord) {
        if r.outcome == Outcome::Rejected {
            self.rejected += 1;
            return;
        }
        self.calls += 1;
        self.wall_ms += Decimal::from(r.wall_us) / Decimal::from(1000);
        self.billed_ms += r.billed_ms;
        self.gb_seconds += gb_seconds(r.max_memory_bytes, r.billed_ms);
        self.fuel += r.fuel;
        self.nn_compute_ms += Decimal::from(r.nn_compute_us) / Decimal::from(1000);
        self.bytes_in += r.bytes_in;
        self.bytes_out += r.bytes_out;
        self.amount += r.amount;
    }

    fn absorb(&mut self, o: &LineItem) {
        self.calls += o.calls;
        self.rejected += o.rejected;
        self.wall_ms += o.wall_ms;
        self.billed_ms += o.billed_ms;
        self.gb_seconds += o.gb_seconds;
        self.fuel += o.fuel;
        self.nn_compute_ms += o.nn_compute_ms;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.amount += o.amount;
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub currency: String,
    pub line_items: Vec<LineItem>,
    pub total: LineItem,
}

/// Line items per (tenant, component, model), sorted, and their total.
pub fn report(records: &[MeterRecord], from: String, to: String) -> Report {
    let mut items: BTreeMap<(String, String, String), LineItem> = BTreeMap::new();
    let mut currency = None;
    for r in records {
        let key = (
            r.tenant.clone().unwrap_or_default(),
            r.component.clone(),
            r.model.clone().unwrap_or_default(),
        );
        let item = items.entry(key.clone()).or_insert_with(|| LineItem {
            tenant: key.0,
            component: key.1,
            model: key.2,
            ..LineItem::default()
        });
        item.add(r);
        currency.get_or_insert_with(|| r.currency.clone());
    }
    let mut total = LineItem {
        tenant: "TOTAL".into(),
        ..LineItem::default()
    };
    for item in items.values() {
        total.absorb(item);
    }
    Report {
        from,
        to,
        currency: currency.unwrap_or_else(usd),
        line_items: items.into_values().collect(),
        total,
    }
}

impl Report {
    /// CSV with a header row, one row per line item, and a `TOTAL` row.
    pub fn write_csv(&self, out: impl Write) -> Result<()> {
        let mut w = csv::Writer::from_writer(out);
        w.write_record([
            "tenant",
            "component",
            "model",
            "calls",
            "rejected",
            "wall_ms",
            "billed_ms",
            "gb_seconds",
            "fuel",
            "nn_compute_ms",
            "bytes_in",
            "bytes_out",
            "amount",
            "currency",
        ])?;
        for item in self.line_items.iter().chain([&self.total]) {
            w.write_record([
                item.tenant.clone(),
                item.component.clone(),
                item.model.clone(),
                item.calls.to_string(),
                item.rejected.to_string(),
                item.wall_ms.normalize().to_string(),
                item.billed_ms.to_string(),
                item.gb_seconds.normalize().to_string(),
                item.fuel.to_string(),
                item.nn_compute_ms.normalize().to_string(),
                item.bytes_in.to_string(),
                item.bytes_out.to_string(),
                item.amount.normalize().to_string(),
                self.currency.clone(),
            ])?;
        }
        w.flush()?;
        Ok(())
    }
}

/// A record as a CloudEvents 1.0 JSON event, the shape OpenMeter ingests:
/// the subject is the tenant (OpenMeter's customer), the data the record.
pub fn cloud_event(r: &MeterRecord) -> serde_json::Value {
    serde_json::json!({
        "specversion": "1.0",
        "type": "edgeinfer.call",
        "source": format!("edgeinfer/{}", r.node),
        "id": r.id,
        "time": r.started_at,
        "subject": r.tenant.clone().unwrap_or_else(|| "anonymous".into()),
        "datacontenttype": "application/json",
        "data": r,
    })
}

/// `DATE` (`2026-11-01`, midnight UTC) or an RFC 3339 timestamp, as Unix µs.
pub fn parse_when(s: &str) -> Result<i64> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_microsecond());
    }
    let date: jiff::civil::Date = s.parse().map_err(|_| {
        anyhow::anyhow!("`{s}` is neither a date (2026-11-01) nor an RFC 3339 timestamp")
    })?;
    Ok(date
        .to_zoned(jiff::tz::TimeZone::UTC)?
        .timestamp()
        .as_microsecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pricing_reads_floats_exactly_and_overrides_per_component() {
        let cfg: BillingConfig = toml::from_str(
            r#"
            currency = "EUR"
            per_call = 0.0000002
            per_gb_second = 0.0000166667
            per_nn_compute_ms = { cpu = 0.0000001, gpu = 0.000002 }
            [component.digits]
            per_call = "0.000001"
            per_nn_compute_ms = { gpu = 0.5 }
            "#,
        )
        .unwrap();
        let base = cfg.rates("other");
        assert_eq!(base.per_call, "0.0000002".parse().unwrap());
        assert_eq!(base.per_gb_second, "0.0000166667".parse().unwrap());
        let d = cfg.rates("digits");
        assert_eq!(d.per_call, "0.000001".parse().unwrap());
        assert_eq!(d.per_gb_second, base.per_gb_second);
        assert_eq!(d.per_nn_compute_ms_cpu, "0.0000001".parse().unwrap());
        assert_eq!(d.per_nn_compute_ms_gpu, "0.5".parse().unwrap());
        assert_eq!(d.currency, "EUR");
        assert!(toml::from_str::<BillingConfig>("per_call = -1").is_err());
    }

    #[test]
    fn fuel_is_priced_by_any_rate_above_zero() {
        let priced = |t: &str| toml::from_str::<BillingConfig>(t).unwrap().prices_fuel();
        assert!(!priced("per_call = 0.1"));
        assert!(!priced("per_million_fuel = 0.0"));
        assert!(priced("per_million_fuel = 0.01"));
        assert!(priced("[component.x]\nper_million_fuel = 0.01"));
    }

    #[test]
    fn billed_time_rounds_up_to_the_millisecond() {
        assert_eq!(billed_ms(0), 0);
        assert_eq!(billed_ms(1), 1);
        assert_eq!(billed_ms(1000), 1);
        assert_eq!(billed_ms(1001), 2);
        // 1 GiB for one second is one GB-second.
        assert_eq!(gb_seconds(1 << 30, 1000), Decimal::ONE);
    }

    #[test]
    fn dates_parse() {
        assert_eq!(parse_when("1970-01-02").unwrap(), 86_400_000_000);
        assert_eq!(parse_when("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
        assert!(parse_when("yesterday").is_err());
    }
}
