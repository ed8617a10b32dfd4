//! The report: named fields printed in order, as aligned text or one JSON object; the
//! latency histograms and rounding its numbers go through.

use hdrhistogram::Histogram;

#[derive(Default)]
pub(crate) struct Report {
    fields: Vec<(String, serde_json::Value)>,
}

impl Report {
    pub(crate) fn put(&mut self, k: &str, v: impl Into<serde_json::Value>) {
        self.fields.push((k.to_owned(), v.into()));
    }
    pub(crate) fn print(&self, json: bool) {
        if json {
            let map: serde_json::Map<String, serde_json::Value> =
                self.fields.iter().cloned().collect();
            println!("{}", serde_json::Value::Object(map));
        } else {
            for (k, v) in &self.fields {
                println!("{k:<28} {v}");
            }
        }
    }
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

pub(crate) fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}
