//! The stripper against the stream shapes real servers send, cut at every offset
//! and at random: what the client gets must equal what the upstream sends when
//! nobody asked for usage, and no complete event may be held back.

use rand::{Rng, SeedableRng};

use super::*;

#[test]
fn request_gets_include_usage_unless_present() {
    let b = request_usage(br#"{"model":"m","stream":true}"#)
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert!(
        request_usage(br#"{"stream_options":{"include_usage":true}}"#)
            .unwrap()
            .is_none()
    );
    let b = request_usage(br#"{"stream_options":{"include_usage":false,"x":1}}"#)
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(
        v["stream_options"],
        serde_json::json!({"include_usage": true, "x": 1})
    );
}

/// One upstream event, as sent with `include_usage` and as sent without it
/// (`None`: the event only exists because of `include_usage`).
struct Event {
    with_usage: String,
    plain: Option<String>,
}

/// A server's stream: its events, with the line end it uses.
struct Dialect {
    name: &'static str,
    events: Vec<Event>,
}

const USAGE_COMPACT: &str = r#"{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}"#;
const USAGE_SPACED: &str = r#"{"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}"#;

fn data(json: &str, eol: &str) -> String {
    format!("data: {json}{eol}{eol}")
}

fn content_events(eol: &str, spaced: bool, usage_null: bool) -> Vec<Event> {
    let deltas = [
        r#"{"role":"assistant","content":""}"#,
        r#"{"content":"Hel"}"#,
        r#"{"content":"lo \"usage\": {}"}"#,
        r#"{}"#,
    ];
    deltas
        .iter()
        .enumerate()
        .map(|(i, delta)| {
            let finish = if i == deltas.len() - 1 {
                "\"stop\""
            } else {
                "null"
            };
            let (plain, with) = if spaced {
                let delta = delta.replace("\":", "\": ").replace(",\"", ", \"");
                let base = format!(
                    r#"{{"id": "c1", "object": "chat.completion.chunk", "choices": [{{"index": 0, "delta": {delta}, "finish_reason": {finish}}}]"#
                );
                (
                    format!("{base}}}"),
                    if usage_null {
                        format!("{base}, \"usage\": null}}")
                    } else {
                        format!("{base}}}")
                    },
                )
            } else {
                let base = format!(
                    r#"{{"id":"c1","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]"#
                );
                (
                    format!("{base}}}"),
                    if usage_null {
                        format!("{base},\"usage\":null}}")
                    } else {
                        format!("{base}}}")
                    },
                )
            };
            Event {
                with_usage: data(&with, eol),
                plain: Some(data(&plain, eol)),
            }
        })
        .collect()
}

fn done(eol: &str) -> Event {
    Event {
        with_usage: data("[DONE]", eol),
        plain: Some(data("[DONE]", eol)),
    }
}

/// The shapes named in the issue, each with every line end.
fn dialects() -> Vec<Dialect> {
    let mut out = Vec::new();
    for eol in ["\n", "\r\n", "\r"] {
        // OpenAI: compact JSON, `"usage":null` on each chunk, a `choices: []` chunk.
        let mut events = content_events(eol, false, true);
        events.push(Event {
            with_usage: data(
                &format!(r#"{{"id":"c1","choices":[],"usage":{USAGE_COMPACT}}}"#),
                eol,
            ),
            plain: None,
        });
        events.push(done(eol));
        out.push(Dialect {
            name: "openai",
            events,
        });

        // LiteLLM: the usage chunk holds one content-less delta.
        let mut events = content_events(eol, false, false);
        events.push(Event {
            with_usage: data(
                &format!(
                    r#"{{"id":"c1","created":1,"model":"m","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{}}}}],"usage":{USAGE_COMPACT}}}"#
                ),
                eol,
            ),
            plain: None,
        });
        events.push(done(eol));
        out.push(Dialect {
            name: "litellm",
            events,
        });

        // sse-starlette with json.dumps: spaced JSON, `usage` first, ping comments.
        let mut events = vec![Event {
            with_usage: format!(": ping - 2026-11-30 12:00:00{eol}{eol}"),
            plain: Some(format!(": ping - 2026-11-30 12:00:00{eol}{eol}")),
        }];
        events.extend(content_events(eol, true, true));
        events.push(Event {
            with_usage: data(
                &format!(r#"{{"usage": {USAGE_SPACED}, "id": "c1", "choices": []}}"#),
                eol,
            ),
            plain: None,
        });
        events.push(done(eol));
        out.push(Dialect {
            name: "starlette",
            events,
        });

        // Usage riding on the last content chunk: only the member goes.
        let mut events = content_events(eol, false, false);
        let last = events.pop().unwrap();
        let plain = last.plain.unwrap();
        let with = plain.replacen(
            r#""finish_reason":"stop"}]"#,
            &format!(r#""finish_reason":"stop"}}],"usage":{USAGE_COMPACT}"#),
            1,
        );
        assert_ne!(with, plain);
        events.push(Event {
            with_usage: with,
            plain: Some(plain),
        });
        events.push(done(eol));
        out.push(Dialect {
            name: "lastchunk",
            events,
        });

        // Named events and ids around the data, as some servers send.
        let events = vec![
            Event {
                with_usage: format!(
                    "event: message{eol}id: 7{eol}data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"x\"}}}}],\"usage\":null}}{eol}{eol}"
                ),
                plain: Some(format!(
                    "event: message{eol}id: 7{eol}data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"x\"}}}}]}}{eol}{eol}"
                )),
            },
            Event {
                with_usage: format!(
                    "id: 8{eol}data:{{\"choices\":[],\"usage\":{USAGE_COMPACT}}}{eol}{eol}"
                ),
                plain: None,
            },
            done(eol),
        ];
        out.push(Dialect {
            name: "fields",
            events,
        });
    }
    out
}

fn with_usage(d: &Dialect) -> String {
    d.events.iter().map(|e| e.with_usage.as_str()).collect()
}

fn plain(d: &Dialect) -> String {
    d.events.iter().filter_map(|e| e.plain.as_deref()).collect()
}

/// Feeds `input` to a stripper cut at `cuts`; after every piece, `check` gets the
/// cut and the output so far. Returns the whole output.
fn feed(input: &[u8], cuts: &[usize], mut check: impl FnMut(usize, &[u8])) -> Vec<u8> {
    let mut s = UsageStripper::default();
    let mut out = Vec::new();
    let mut prev = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        out.extend_from_slice(&s.push(Bytes::copy_from_slice(&input[prev..cut])));
        prev = cut;
        check(cut, &out);
    }
    out.extend_from_slice(&s.finish());
    out
}

/// Random sorted cut sets for an input of `len` bytes.
fn random_cuts(rng: &mut rand::rngs::StdRng, len: usize, most: usize) -> Vec<usize> {
    let n = rng.random_range(1..=most);
    let mut cuts: Vec<usize> = (0..n).map(|_| rng.random_range(0..=len)).collect();
    cuts.sort_unstable();
    cuts
}

/// Checks after every piece that the output is a prefix of the plain stream
/// holding every event already complete in the input.
fn run(d: &Dialect, cuts: &[usize]) {
    let input = with_usage(d);
    let expected = plain(d);
    // (end of the event in the input, output length owed once it is complete)
    let mut owed = Vec::new();
    let (mut at, mut out_len) = (0, 0);
    for e in &d.events {
        at += e.with_usage.len();
        out_len += e.plain.as_ref().map_or(0, String::len);
        owed.push((at, out_len));
    }
    let out = feed(input.as_bytes(), cuts, |cut, out| {
        let must = owed
            .iter()
            .take_while(|(end, _)| *end <= cut)
            .last()
            .map_or(0, |(_, len)| *len);
        assert!(
            expected.as_bytes().starts_with(out),
            "{} {:?}: output is not a prefix of the plain stream at cut {cut}:\n{:?}",
            d.name,
            d.events[0].with_usage.chars().last(),
            String::from_utf8_lossy(out)
        );
        assert!(
            out.len() >= must,
            "{}: an event complete at {cut} was held back",
            d.name
        );
    });
    assert_eq!(
        String::from_utf8(out).unwrap(),
        expected,
        "{} cuts {cuts:?}",
        d.name
    );
}

#[test]
fn every_dialect_whole_and_cut_at_every_offset() {
    for d in dialects() {
        run(&d, &[]);
        for cut in 0..=with_usage(&d).len() {
            run(&d, &[cut]);
        }
    }
}

#[test]
fn every_dialect_cut_at_random_offsets() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0015);
    for d in dialects() {
        let len = with_usage(&d).len();
        for _ in 0..400 {
            run(&d, &random_cuts(&mut rng, len, 24));
        }
        // Byte by byte.
        run(&d, &(1..len).collect::<Vec<_>>());
    }
}

#[test]
fn unchanged_events_leave_as_the_same_bytes() {
    let mut s = UsageStripper::default();
    let chunk = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
    let out = s.push(chunk.clone());
    assert_eq!(
        out.as_ptr(),
        chunk.as_ptr(),
        "passed through without a copy"
    );
}

#[test]
fn member_cut_keeps_the_object_valid() {
    for (json, want) in [
        (r#"{"a":1,"usage":null}"#, r#"{"a":1}"#),
        (r#"{"usage":null,"a":1}"#, r#"{"a":1}"#),
        (r#"{"usage":{"x":[1,{"y":"}"}]}}"#, r#"{}"#),
        (
            r#"{ "a": "u\"sage", "usage" : null , "b": [] }"#,
            r#"{ "a": "u\"sage" , "b": [] }"#,
        ),
    ] {
        let m = top_level_member(json.as_bytes(), b"usage").unwrap();
        let mut out = json.as_bytes()[..m.cut.start].to_vec();
        out.extend_from_slice(&json.as_bytes()[m.cut.end..]);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
    assert!(top_level_member(br#"{"a":{"usage":1}}"#, b"usage").is_none());
    assert!(top_level_member(b"[DONE]", b"usage").is_none());
}

/// The streams the test mock records for each real server's dialect
/// (`tests/fixtures/sse`, kept in step with the mock by a test there): with usage
/// asked, and as the client must receive them without.
#[test]
fn recorded_dialect_streams_cut_at_random_offsets() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sse");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_f1c5);
    let mut checked = 0;
    for dialect in ["openai", "litellm", "starlette", "llamacpp", "lastchunk"] {
        for kind in ["chat", "tools"] {
            let read = |name: String| std::fs::read(dir.join(name)).unwrap();
            let with = read(format!("{dialect}-{kind}-usage.txt"));
            let plain = read(format!("{dialect}-{kind}.txt"));
            for round in 0..300 {
                let cuts: Vec<usize> = match round {
                    0 => Vec::new(),
                    1 => (1..with.len()).collect(),
                    _ => random_cuts(&mut rng, with.len(), 32),
                };
                let out = feed(&with, &cuts, |_, out| {
                    assert!(plain.starts_with(out), "{dialect}-{kind} round {round}");
                });
                assert_eq!(out, plain, "{dialect}-{kind} round {round}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
}
