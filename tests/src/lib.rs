pub mod bench;
pub mod mock;
pub mod sse;
