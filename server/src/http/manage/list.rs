//! Query parameters shared by list calls: `limit` (1–500, default 50), `cursor`
//! (opaque; the last id of the previous page), `active`, `project_id`.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::error::ManageError;
use crate::service::Page;

pub const DEFAULT_LIMIT: u64 = 50;
pub const MAX_LIMIT: u64 = 500;

pub struct ListParams {
    pub page: Page,
    pub active: Option<bool>,
    pub project_id: Option<Uuid>,
}

impl ListParams {
    pub fn parse(query: &str) -> Result<Self, ManageError> {
        let mut errors = BTreeMap::new();
        let mut params = ListParams {
            page: Page {
                limit: DEFAULT_LIMIT,
                after: None,
            },
            active: None,
            project_id: None,
        };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "limit" => match v.parse::<u64>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => params.page.limit = n,
                    _ => {
                        errors.insert(
                            "limit".into(),
                            format!("must be an integer from 1 to {MAX_LIMIT}"),
                        );
                    }
                },
                "cursor" => match Uuid::try_parse(&v) {
                    Ok(id) => params.page.after = Some(id),
                    Err(_) => {
                        errors.insert(
                            "cursor".into(),
                            "is not a cursor returned by this API".into(),
                        );
                    }
                },
                "active" => match v.as_ref() {
                    "true" => params.active = Some(true),
                    "false" => params.active = Some(false),
                    _ => {
                        errors.insert("active".into(), "must be true or false".into());
                    }
                },
                "project_id" => match Uuid::try_parse(&v) {
                    Ok(id) => params.project_id = Some(id),
                    Err(_) => {
                        errors.insert("project_id".into(), "must be a project id".into());
                    }
                },
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(params)
        } else {
            Err(ManageError::Validation(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cursor() {
        assert_eq!(ListParams::parse("").unwrap().page.limit, 50);
        assert_eq!(ListParams::parse("limit=500").unwrap().page.limit, 500);
        assert!(ListParams::parse("limit=0").is_err());
        assert!(ListParams::parse("limit=501").is_err());
        assert!(ListParams::parse("cursor=zzz").is_err());
        assert_eq!(
            ListParams::parse("active=false").unwrap().active,
            Some(false)
        );
    }
}
