//! securecomm-node
