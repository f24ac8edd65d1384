//! securecomm-app
