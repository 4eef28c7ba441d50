//! Human-friendly config values: durations (`30s`, `100ms`, `30d`) and sizes
//! (`10485760`, `10MiB`). Both also accept plain numbers, and strings, because a
//! `${VAR}` expansion always yields a string.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written like `30s`, `100ms`, `5m`, `30d`; a bare number is seconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Self::secs(n));
        }
        humantime::parse_duration(s)
            .map(Self)
            .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 30s, 100ms, 5m, 30d"))
    }
}

/// In the units a configuration is written in, days the largest: `365d`, `30d`,
/// `1h 30m`, `100ms`. `humantime::format_duration` counts in years of 365.25 days
/// and months of 30.44, so a configured `365d` came out as
/// `11months 30days 3h 50m 24s`. The output parses back to the same duration.
impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let nanos = u64::from(self.0.subsec_nanos());
        if secs == 0 && nanos == 0 {
            return f.write_str("0s");
        }
        let parts = [
            (secs / 86_400, "d"),
            (secs / 3_600 % 24, "h"),
            (secs / 60 % 60, "m"),
            (secs % 60, "s"),
            (nanos / 1_000_000, "ms"),
            (nanos / 1_000 % 1_000, "us"),
            (nanos % 1_000, "ns"),
        ];
        let mut sep = "";
        for (n, unit) in parts.into_iter().filter(|(n, _)| *n > 0) {
            write!(f, "{sep}{n}{unit}")?;
            sep = " ";
        }
        Ok(())
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s, 100ms or 30d")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(HumanDuration::secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(HumanDuration::secs)
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                HumanDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte count: a number, or a string with a unit (`KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}; use e.g. 10485760 or 10MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            other => return Err(format!("unknown size unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(Self)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 10485760 or 10MiB")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes an integer written as a number or as a string (from `${VAR}`).
pub fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ByteSize::deserialize(d).map(|b| b.0)
}

/// `server.tls.min_version`: `1.2` (the default when unset) or `1.3`, read as a
/// string or a YAML number, checked once when the configuration is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

impl TlsVersion {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "1.2" => Ok(Self::V1_2),
            "1.3" => Ok(Self::V1_3),
            other => Err(format!(
                "{other:?} is not a TLS version Palisade serves (1.2 or 1.3)"
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::V1_2 => "1.2",
            Self::V1_3 => "1.3",
        }
    }

    /// The versions served: this one and every newer one.
    pub fn and_newer(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            Self::V1_2 => &BOTH,
            Self::V1_3 => &ONLY_13,
        }
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Text(String),
            Number(f64),
        }
        let text = match Written::deserialize(d)? {
            Written::Text(s) => s,
            Written::Number(n) => n.to_string(),
        };
        Self::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(
            HumanDuration::parse("30s").unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            HumanDuration::parse("100ms").unwrap().0,
            Duration::from_millis(100)
        );
        assert_eq!(
            HumanDuration::parse("30d").unwrap().0,
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(HumanDuration::parse("5").unwrap().0, Duration::from_secs(5));
        assert!(HumanDuration::parse("soon").is_err());
    }

    #[test]
    fn durations_print_as_configured_in_days_at_most() {
        for (configured, printed) in [
            ("365d", "365d"),
            ("30d", "30d"),
            ("1d", "1d"),
            ("90s", "1m 30s"),
            ("1500ms", "1s 500ms"),
            ("100ms", "100ms"),
            ("0s", "0s"),
            ("3d 4h 5m 6s 7ms 8us 9ns", "3d 4h 5m 6s 7ms 8us 9ns"),
        ] {
            let d = HumanDuration::parse(configured).unwrap();
            assert_eq!(d.to_string(), printed, "{configured}");
            assert_eq!(format!("{d:?}"), printed, "{configured}");
            assert_eq!(HumanDuration::parse(printed).unwrap(), d, "{printed}");
        }
        let yaml = yaml_serde::to_string(&HumanDuration::secs(365 * 86_400)).unwrap();
        assert_eq!(yaml.trim(), "365d");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("10485760").unwrap().0, 10_485_760);
        assert_eq!(ByteSize::parse("10MiB").unwrap().0, 10_485_760);
        assert_eq!(ByteSize::parse("1KB").unwrap().0, 1000);
        assert!(ByteSize::parse("10XB").is_err());
        assert!(ByteSize::parse("-1").is_err());
    }
}
