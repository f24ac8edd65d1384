//! securecomm-rendezvous
