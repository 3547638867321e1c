//! The cairn binary: CLI and composition root.
fn main() {}
