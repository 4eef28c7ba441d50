//! The pass/fail lines of the report: the benchmark issue's targets, and "adds
//! nothing measurable" comparisons against the `--audit-off` and `--limits-off`
//! sides.

use super::audit_ab::AbResult;
use super::report::{Check, GatewayResult, ManyStreamsResult, Memory};

/// The targets, against nginx where it was measured in the same run.
pub fn checks(
    results: &[GatewayResult],
    audit_ab: Option<&AbResult>,
    many: Option<&ManyStreamsResult>,
    mem: Option<&Memory>,
) -> Vec<Check> {
    let mut out = Vec::new();
    let Some(p) = results.iter().find(|g| g.name == "palisade") else {
        return out;
    };
    let ms = |v: f64| format!("{:.3} ms", v / 1000.0);
    if let Some(n) = results.iter().find(|g| g.name == "nginx") {
        out.push(Check {
            target: "c=1 added p50 ≤ 1.5 × nginx".into(),
            measured: format!("{} vs nginx {}", ms(p.c1_added.p50), ms(n.c1_added.p50)),
            pass: p.c1_added.p50 <= 1.5 * n.c1_added.p50,
        });
        out.push(Check {
            target: "c=1 added p99 ≤ 1.5 × nginx".into(),
            measured: format!("{} vs nginx {}", ms(p.c1_added.p99), ms(n.c1_added.p99)),
            pass: p.c1_added.p99 <= 1.5 * n.c1_added.p99,
        });
        out.push(Check {
            target: "c=64 RPS ≥ 50 % of nginx".into(),
            measured: format!(
                "{:.0} vs nginx {:.0} ({:.0} %)",
                p.closed_rps,
                n.closed_rps,
                100.0 * p.closed_rps / n.closed_rps
            ),
            pass: p.closed_rps >= 0.5 * n.closed_rps,
        });
    }
    // Issue 18: the shared-state build must not put the databases on the path.
    if let Some(q) = results.iter().find(|g| g.name == super::scale_out::SIDE) {
        out.push(Check {
            target: "PostgreSQL + Redis: c=1 added p50 ≤ 1.5 × SQLite".into(),
            measured: format!("{} vs SQLite {}", ms(q.c1_added.p50), ms(p.c1_added.p50)),
            pass: q.c1_added.p50 <= 1.5 * p.c1_added.p50,
        });
    }
    // "Adds nothing measurable": at most 10 % or 100 µs (whichever is larger) above
    // the side without the feature; run-to-run noise on this class of machine
    // exceeds both, in either direction.
    let same = |on: f64, off: f64| on - off <= (0.1 * off).max(100.0);
    if let Some(q) = results.iter().find(|g| g.name == "palisade-limits-off") {
        out.push(Check {
            target: "queue and rate limits on vs off: c=1 p99 not higher".into(),
            measured: format!("{} vs {}", ms(p.c1.p99), ms(q.c1.p99)),
            pass: same(p.c1.p99, q.c1.p99),
        });
        out.push(Check {
            target: "queue and rate limits on vs off: c=1 p50 not higher".into(),
            measured: format!("{} vs {}", ms(p.c1.p50), ms(q.c1.p50)),
            pass: same(p.c1.p50, q.c1.p50),
        });
    }
    if let Some(q) = results.iter().find(|g| g.name == "palisade-audit-off") {
        out.push(Check {
            target: "audit/usage on vs off: c=1 p99 not higher".into(),
            measured: format!("{} vs {}", ms(p.c1.p99), ms(q.c1.p99)),
            pass: same(p.c1.p99, q.c1.p99),
        });
    }
    if let Some(ab) = audit_ab {
        // Not higher by more than the noise allowance, and not higher in
        // significantly more rounds than chance.
        let slower = ab.on_higher_rounds * 2 > ab.rounds && ab.sign_test_p < 0.05;
        out.push(Check {
            target: format!(
                "audit/usage on vs off: p99 at {:.0}/s unchanged (median of {} rounds)",
                ab.rate, ab.rounds
            ),
            measured: format!(
                "{} vs {}; on higher in {} of {} rounds, p = {:.2}",
                ms(ab.on.round_p99_median_us),
                ms(ab.off.round_p99_median_us),
                ab.on_higher_rounds,
                ab.rounds,
                ab.sign_test_p
            ),
            pass: same(ab.on.round_p99_median_us, ab.off.round_p99_median_us) && !slower,
        });
    }
    out.push(Check {
        target: "c=64 added p99 ≤ 2 ms".into(),
        measured: ms(p.closed_added_p99_us),
        pass: p.closed_added_p99_us <= 2000.0,
    });
    out.push(Check {
        target: "c=64 0 errors".into(),
        measured: p.closed_errors.to_string(),
        pass: p.closed_errors == 0,
    });
    out.push(Check {
        target: "streaming added TTFB p99 ≤ 0.2 ms".into(),
        measured: ms(p.stream_ttfb_added.p99),
        pass: p.stream_ttfb_added.p99 <= 200.0,
    });
    out.push(Check {
        target: "streaming added inter-chunk p99 ≤ 50 µs".into(),
        measured: format!("{:.0} µs", p.stream_gap_added_p99_us),
        pass: p.stream_gap_added_p99_us <= 50.0,
    });
    if let Some(m) = many {
        out.push(Check {
            target: format!("{} concurrent streams, no stall", m.streams),
            measured: format!(
                "{} stalled, {} errors, max gap {:.1} ms",
                m.stalled, m.errors, m.max_gap_ms
            ),
            pass: m.stalled == 0 && m.errors == 0,
        });
    }
    if let Some(m) = mem {
        out.push(Check {
            target: "idle RSS ≤ 20 MB".into(),
            measured: format!("{:.1} MB", m.idle_kib as f64 / 1024.0),
            pass: m.idle_kib <= 20 * 1024,
        });
        out.push(Check {
            target: "RSS ≤ 100 MB during the stream run".into(),
            measured: format!("{:.1} MB", m.peak_kib as f64 / 1024.0),
            pass: m.peak_kib <= 100 * 1024,
        });
    }
    out
}
