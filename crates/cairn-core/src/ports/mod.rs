//! The ports: traits that adapters implement and the actors and API depend on.
//! Each port has an embedded adapter (no external service) and a production one,
//! and both pass the same conformance suite.

mod analyzer;
mod bus;
mod chat;
mod counters;
mod knowledge;
mod limits;
mod memory;
mod records;
mod tickets;
mod tool;

pub use analyzer::*;
pub use bus::*;
pub use chat::*;
pub use counters::*;
pub use knowledge::*;
pub use limits::*;
pub use memory::*;
pub use records::*;
pub use tickets::*;
pub use tool::*;
