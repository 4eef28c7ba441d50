pub use super::audit_events::Entity as AuditEvents;
pub use super::projects::Entity as Projects;
pub use super::tokens::Entity as Tokens;
pub use super::usage_records::Entity as UsageRecords;
