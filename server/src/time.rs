//! Wall-clock time for stored timestamps, truncated to microseconds so values
//! survive a round trip through SQLite text and PostgreSQL `timestamptz` unchanged.

use chrono::{DateTime, SubsecRound, Utc};

pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
