//! The only code that builds SeaORM queries. Handlers read through [`query`]; only the
//! `TokenRegistry` actor calls [`mutation`], so it stays the single writer of project
//! and token state and can keep its cache in step with the database.

pub mod copy;
pub mod mutation;
pub mod query;
pub mod registry_sync;
pub mod sessions;
mod usage_rows;

/// A page request: at most `limit` rows with id greater than `after`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: u64,
    pub after: Option<uuid::Uuid>,
}

/// A page of rows, plus the cursor of the next page when there is one.
#[derive(Debug)]
pub struct Paged<T> {
    pub rows: Vec<T>,
    pub next: Option<uuid::Uuid>,
}

impl<T> Paged<T> {
    /// Rows were fetched with `limit + 1`: the extra row only proves there is more.
    pub(crate) fn from_overfetch(
        mut rows: Vec<T>,
        limit: u64,
        id: impl Fn(&T) -> uuid::Uuid,
    ) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(&id)
        } else {
            None
        };
        Self { rows, next }
    }
}
