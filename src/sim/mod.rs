//! The local CXone API simulator: placeholder, being written.
