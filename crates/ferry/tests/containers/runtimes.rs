//! The real clients: runc and Podman with ferry as their `criu`.
