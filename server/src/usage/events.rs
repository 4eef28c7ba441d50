//! The `data` of each event in a kept piece of an SSE stream, read as the SSE
//! specification says: a line ends with CRLF, LF or CR; a blank line ends an
//! event; the `data` lines of one event are joined with LF (one leading space
//! after the colon is dropped); comments (`:`) and other fields are skipped.
//!
//! Unlike a client, accounting also takes a last event that never got its blank
//! line (a stream cut short, or a kept head that ends mid-stream): if its JSON is
//! whole it still counts, and if it is not, parsing it fails harmlessly.

use std::borrow::Cow;

/// Each event's data, in stream order; events without data are left out.
pub fn data_events(text: &str) -> Vec<Cow<'_, str>> {
    let mut out = Vec::new();
    let mut data: Option<Cow<'_, str>> = None;
    for line in lines(text) {
        if line.is_empty() {
            out.extend(data.take());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field != "data" {
            continue;
        }
        data = Some(match data.take() {
            None => Cow::Borrowed(value),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push('\n');
                joined.push_str(value);
                Cow::Owned(joined)
            }
        });
    }
    out.extend(data);
    out
}

/// Lines split at CRLF, LF or a lone CR.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        match rest.find(['\r', '\n']) {
            None => Some(std::mem::take(&mut rest)),
            Some(i) => {
                let line = &rest[..i];
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = &rest[i + skip..];
                Some(line)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_separator_and_multi_line_data() {
        for sep in ["\n", "\r\n", "\r"] {
            let text = format!(
                ": comment{sep}event: x{sep}data: {{\"a\":1}}{sep}{sep}data:b{sep}data: c{sep}{sep}id: 7{sep}{sep}data: last"
            );
            assert_eq!(
                data_events(&text),
                vec!["{\"a\":1}", "b\nc", "last"],
                "separator {sep:?}"
            );
        }
    }

    #[test]
    fn empty_input_has_no_events() {
        assert!(data_events("").is_empty());
        assert!(data_events("\n\n\r\n").is_empty());
    }
}
