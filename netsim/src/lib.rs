//! securecomm-netsim
