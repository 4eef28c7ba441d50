//! Latency samples and percentiles (nearest-rank on sorted samples, in microseconds).

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let mean = if s.is_empty() {
        f64::NAN
    } else {
        s.iter().sum::<f64>() / s.len() as f64
    };
    Summary {
        n: s.len(),
        p50: percentile(&s, 50.0),
        p90: percentile(&s, 90.0),
        p99: percentile(&s, 99.0),
        p999: percentile(&s, 99.9),
        max: s.last().copied().unwrap_or(f64::NAN),
        mean,
    }
}

/// Per-percentile difference `via - direct`: the latency the gateway adds.
pub fn added(via: &Summary, direct: &Summary) -> Summary {
    Summary {
        n: via.n,
        p50: via.p50 - direct.p50,
        p90: via.p90 - direct.p90,
        p99: via.p99 - direct.p99,
        p999: via.p999 - direct.p999,
        max: via.max - direct.max,
        mean: via.mean - direct.mean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = summarize(&v);
        assert_eq!(s.p50, 50.0);
        assert_eq!(s.p99, 99.0);
        assert_eq!(s.p999, 100.0);
        assert_eq!(s.max, 100.0);
    }
}
