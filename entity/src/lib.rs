//! SeaORM entities, one module per table, in the shape `sea-orm-cli generate entity`
//! produces. No business logic lives here: queries and mutations are in
//! `palisade::service`, policy in the actors.

pub mod audit_events;
pub mod prelude;
pub mod projects;
pub mod refresh_tokens;
pub mod revoked_jtis;
pub mod tokens;
pub mod usage_records;
pub mod users;
