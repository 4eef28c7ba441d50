pub use super::projects::Entity as Projects;
pub use super::tokens::Entity as Tokens;
