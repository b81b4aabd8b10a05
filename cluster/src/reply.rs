//! The answers handlers give when something is refused or fails, in one wording.

use qvdc_raft::{DesiredState, ValidationError};
use qvdc_transport::protocol::{ApiError, ApiErrorKind, Response};

/// A change the desired state's rules refuse.
pub(crate) fn rejected(e: ValidationError) -> Response {
    let kind = match e {
        ValidationError::PoolExists(_)
        | ValidationError::VmExists(_)
        | ValidationError::VolumeExists { .. }
        | ValidationError::NetworkExists(_) => ApiErrorKind::AlreadyExists,
        ValidationError::NoSuchVm(_)
        | ValidationError::NoSuchPool(_)
        | ValidationError::NoSuchVolume { .. }
        | ValidationError::NoSuchNetwork(_) => ApiErrorKind::NotFound,
        _ => ApiErrorKind::Invalid,
    };
    error(kind, e.to_string())
}

pub(crate) fn error(kind: ApiErrorKind, message: impl Into<String>) -> Response {
    Response::Api(Err(ApiError::new(kind, message)))
}

/// A request that cannot be carried out as asked.
pub(crate) fn invalid(message: impl Into<String>) -> Response {
    error(ApiErrorKind::Invalid, message)
}

/// A request that may succeed when retried.
pub(crate) fn unavailable(message: impl Into<String>) -> Response {
    error(ApiErrorKind::Unavailable, message)
}

pub(crate) fn not_found(message: impl Into<String>) -> Response {
    error(ApiErrorKind::NotFound, message)
}

/// No pool `name` has a supervisor on this leader: it does not exist, or it was created a
/// moment ago.
pub(crate) fn no_pool(desired: &DesiredState, name: &str) -> Response {
    if desired.pools.contains_key(name) {
        return unavailable(format!(
            "pool {name:?} is being set up on this leader; retry in a moment"
        ));
    }
    not_found(format!(
        "no pool named {name:?}; `qvctl pool list` shows the pools"
    ))
}

/// No VM `name` has a supervisor on this leader: it does not exist, or it was created a
/// moment ago.
pub(crate) fn no_vm(desired: &DesiredState, name: &str) -> Response {
    if desired.vms.contains_key(name) {
        return unavailable(format!(
            "VM {name:?} is being set up on this leader; retry in a moment"
        ));
    }
    not_found(format!(
        "no VM named {name:?}; `qvctl vm list` shows the VMs"
    ))
}

pub(crate) fn no_host(host: &str) -> Response {
    not_found(format!(
        "no host named {host:?}; `qvctl host list` shows the hosts"
    ))
}
