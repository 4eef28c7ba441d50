//! Output: a markdown table (stdout), a JSON file and an SVG chart under
//! `target/bench/`.

use std::fmt::Write as _;

use serde::Serialize;

use super::audit_ab::AbResult;
use super::stats::Summary;

#[derive(Debug, Serialize, Default)]
pub struct GatewayResult {
    pub name: String,
    pub c1: Summary,
    pub c1_added: Summary,
    pub closed_rps: f64,
    pub closed_p99_us: f64,
    pub closed_added_p99_us: f64,
    pub closed_errors: u64,
    pub open_rate: f64,
    pub open: Summary,
    pub open_added_p99_us: f64,
    pub open_errors: u64,
    pub stream_ttfb: Summary,
    pub stream_ttfb_added: Summary,
    pub stream_gap: Summary,
    pub stream_gap_added_p99_us: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct Memory {
    pub idle_kib: u64,
    pub peak_kib: u64,
    pub after_kib: u64,
}

#[derive(Debug, Serialize, Default)]
pub struct ManyStreamsResult {
    pub streams: usize,
    pub errors: usize,
    pub stalled: usize,
    pub max_gap_ms: f64,
    pub seconds: f64,
    pub direct_stalled: usize,
    pub direct_max_gap_ms: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct Check {
    pub target: String,
    pub measured: String,
    pub pass: bool,
}

#[derive(Debug, Serialize, Default)]
pub struct Report {
    pub date: String,
    pub placement: String,
    pub features_on: Vec<String>,
    pub c1_requests_per_side: usize,
    pub closed_concurrency: usize,
    pub closed_seconds: f64,
    pub direct_c1: Summary,
    pub direct_closed_rps: f64,
    pub direct_closed_p99_us: f64,
    pub direct_open: Summary,
    pub direct_stream_ttfb: Summary,
    pub direct_stream_gap: Summary,
    pub gateways: Vec<GatewayResult>,
    pub audit_ab: Option<AbResult>,
    pub many_streams: Option<ManyStreamsResult>,
    pub memory: Option<Memory>,
    pub checks: Vec<Check>,
}

fn us(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Benchmark {} — {}", r.date, r.placement);
    let _ = writeln!(s, "Features on: {}\n", r.features_on.join(", "));
    let _ = writeln!(
        s,
        "| c=1, non-streaming ({} req/side, interleaved) | p50 | p90 | p99 | p99.9 |",
        r.c1_requests_per_side
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let d = &r.direct_c1;
    let _ = writeln!(
        s,
        "| direct to mock | {} | {} | {} | {} |",
        us(d.p50),
        us(d.p90),
        us(d.p99),
        us(d.p999)
    );
    for g in &r.gateways {
        let a = &g.c1_added;
        let _ = writeln!(
            s,
            "| {} added | {} | {} | {} | {} |",
            g.name,
            us(a.p50),
            us(a.p90),
            us(a.p99),
            us(a.p999)
        );
    }
    let _ = writeln!(
        s,
        "\n| c={} closed loop, {:.0} s | RPS | p99 | added p99 | errors |",
        r.closed_concurrency, r.closed_seconds
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| direct to mock | {:.0} | {} | | |",
        r.direct_closed_rps,
        us(r.direct_closed_p99_us)
    );
    for g in &r.gateways {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {} | {} |",
            g.name,
            g.closed_rps,
            us(g.closed_p99_us),
            us(g.closed_added_p99_us),
            g.closed_errors
        );
    }
    let _ = writeln!(
        s,
        "\n| open loop (latency from scheduled send) | rate | p50 | p99 | added p99 | errors |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let o = &r.direct_open;
    let rate = r.gateways.first().map_or(0.0, |g| g.open_rate);
    let _ = writeln!(
        s,
        "| direct to mock | {rate:.0}/s | {} | {} | | |",
        us(o.p50),
        us(o.p99)
    );
    for g in &r.gateways {
        let _ = writeln!(
            s,
            "| {} | {:.0}/s | {} | {} | {} | {} |",
            g.name,
            g.open_rate,
            us(g.open.p50),
            us(g.open.p99),
            us(g.open_added_p99_us),
            g.open_errors
        );
    }
    let _ = writeln!(
        s,
        "\n| streaming (64 chunks, 20 ms apart) | TTFB p50 | TTFB p99 | added TTFB p50 | added TTFB p99 | gap p99 | added gap p99 |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let _ = writeln!(
        s,
        "| direct to mock | {} | {} | | | {} | |",
        us(r.direct_stream_ttfb.p50),
        us(r.direct_stream_ttfb.p99),
        us(r.direct_stream_gap.p99)
    );
    for g in &r.gateways {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            g.name,
            us(g.stream_ttfb.p50),
            us(g.stream_ttfb.p99),
            us(g.stream_ttfb_added.p50),
            us(g.stream_ttfb_added.p99),
            us(g.stream_gap.p99),
            us(g.stream_gap_added_p99_us)
        );
    }
    if let Some(ab) = &r.audit_ab {
        audit_ab_table(&mut s, ab);
    }
    if let Some(m) = &r.many_streams {
        let _ = writeln!(
            s,
            "\n{} concurrent streams through Palisade: {} errors, {} stalled, max gap {:.1} ms, {:.1} s (direct to mock: {} stalled, max gap {:.1} ms)",
            m.streams,
            m.errors,
            m.stalled,
            m.max_gap_ms,
            m.seconds,
            m.direct_stalled,
            m.direct_max_gap_ms
        );
    }
    if let Some(m) = &r.memory {
        let _ = writeln!(
            s,
            "\nPalisade RSS: idle {:.1} MB, peak {:.1} MB, after load {:.1} MB",
            m.idle_kib as f64 / 1024.0,
            m.peak_kib as f64 / 1024.0,
            m.after_kib as f64 / 1024.0
        );
    }
    if !r.checks.is_empty() {
        let _ = writeln!(s, "\n| target | measured | |\n|---|---|---|");
        for c in &r.checks {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                c.target,
                c.measured,
                if c.pass { "met" } else { "MISSED" }
            );
        }
    }
    s
}

fn audit_ab_table(s: &mut String, ab: &AbResult) {
    let _ = writeln!(
        s,
        "\n| audit on/off A/B: open loop at {:.0}/s, {} alternating rounds × {:.1} s | p50 | p99 pooled | p99.9 pooled | p99 median of rounds | errors | CPU per request | of which writer + SQLite |",
        ab.rate, ab.rounds, ab.round_seconds
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for side in [&ab.on, &ab.off] {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            side.name,
            us(side.pooled.p50),
            us(side.pooled.p99),
            us(side.pooled.p999),
            us(side.round_p99_median_us),
            side.errors,
            us(side.cpu_us_per_request),
            us(side.writer_cpu_us_per_request)
        );
    }
    let _ = writeln!(
        s,
        "\nAudit on had the higher p99 in {} of {} rounds (two-sided sign test p = {:.2}).",
        ab.on_higher_rounds, ab.rounds, ab.sign_test_p
    );
}

/// Latency percentiles at c=1: direct and through each gateway.
pub fn svg(r: &Report) -> String {
    let labels = ["p50", "p90", "p99", "p99.9"];
    let pick = |s: &Summary| [s.p50, s.p90, s.p99, s.p999];
    let mut series: Vec<(String, [f64; 4])> = vec![("direct".to_owned(), pick(&r.direct_c1))];
    for g in &r.gateways {
        series.push((g.name.clone(), pick(&g.c1)));
    }
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let (w, h, left, bottom, top) = (720.0, 400.0, 70.0, 50.0, 40.0);
    let plot_w = w - left - 30.0;
    let plot_h = h - bottom - top;
    let colors = ["#555555", "#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="14">Latency at c=1, non-streaming chat ({})</text>"#,
        r.date
    );
    for i in 0..=4 {
        let v = max * f64::from(i) / 4.0;
        let y = top + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0} µs</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0,
            v
        );
    }
    let group = plot_w / labels.len() as f64;
    let bar = group * 0.8 / series.len() as f64;
    for (li, label) in labels.iter().enumerate() {
        let gx = left + group * li as f64 + group * 0.1;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            gx + group * 0.4,
            top + plot_h + 18.0
        );
        for (si, (_, vals)) in series.iter().enumerate() {
            let v = vals[li].max(0.0);
            let bh = plot_h * v / max;
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/>"#,
                gx + bar * si as f64,
                top + plot_h - bh,
                bar * 0.9,
                colors[si % colors.len()]
            );
        }
    }
    for (si, (name, _)) in series.iter().enumerate() {
        let x = left + 10.0 + 150.0 * si as f64;
        let y = h - 12.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{y:.1}">{name}</text>"#,
            y - 10.0,
            colors[si % colors.len()],
            x + 16.0
        );
    }
    s.push_str("</svg>\n");
    s
}
