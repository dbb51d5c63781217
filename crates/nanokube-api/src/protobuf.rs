//! Protobuf request bodies (filled in below).
