//! The ractor supervision tree: conversation supervisor, conversation actors, bus bridges.
