//! securecomm-crdt
