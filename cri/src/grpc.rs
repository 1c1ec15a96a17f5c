//! Every domain error → the gRPC status CRI-O answers with, in one trait.
//! The matches name every variant: a new one must be given its code here.

use berth_image::{ClientError, StoreError};
use berth_runtime::containers;
use tonic::Status;

use crate::RequestError;
use crate::resources::ResourceError;

/// The gRPC status of an error, its message the error's own.
pub trait ToStatus {
    fn to_status(&self) -> Status;
}

/// Whether `err` or one of its causes is a full disk or quota: every RPC
/// answers RESOURCE_EXHAUSTED for it, whichever step ran out of room.
pub fn out_of_space(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        })
    })
}

impl ToStatus for RequestError {
    fn to_status(&self) -> Status {
        match self {
            RequestError::Invalid { .. } | RequestError::Unsupported { .. } => {
                Status::invalid_argument(self.to_string())
            }
            RequestError::Host { .. } => Status::internal(self.to_string()),
        }
    }
}

impl ToStatus for ResourceError {
    fn to_status(&self) -> Status {
        Status::invalid_argument(self.to_string())
    }
}

impl ToStatus for containers::Error {
    fn to_status(&self) -> Status {
        use containers::Error;
        let message = self.to_string();
        if out_of_space(self) {
            return Status::resource_exhausted(message);
        }
        match self {
            Error::NotFound(_) => Status::not_found(message),
            Error::Ambiguous { .. } | Error::UnknownHandler { .. } => {
                Status::invalid_argument(message)
            }
            Error::NameReserved { .. } => Status::already_exists(message),
            Error::WrongState { .. } => Status::failed_precondition(message),
            Error::Create(berth_runtime::lifecycle::ContainerError::Adjust { .. }) => {
                Status::unknown(message)
            }
            // The request named what the image does not have.
            Error::Create(berth_runtime::lifecycle::ContainerError::Mounts {
                source: berth_runtime::mounts::MountError::SubPath { .. },
                ..
            }) => Status::invalid_argument(message),
            Error::Id(_)
            | Error::Reopen { .. }
            | Error::Create(_)
            | Error::Runtime(_)
            | Error::Remove(_)
            | Error::Store(_)
            | Error::Update { .. } => Status::internal(message),
        }
    }
}

impl ToStatus for berth_sandbox::Error {
    fn to_status(&self) -> Status {
        use berth_sandbox::Error;
        let message = self.to_string();
        if out_of_space(self) {
            return Status::resource_exhausted(message);
        }
        match self {
            Error::Invalid(_) | Error::UnknownHandler { .. } | Error::Ambiguous { .. } => {
                Status::invalid_argument(message)
            }
            Error::NameReserved { .. } => Status::already_exists(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::Network(berth_cni::Error::NotReady(_)) => Status::failed_precondition(message),
            Error::Io { .. }
            | Error::Namespace(_)
            | Error::Infra(_)
            | Error::Files(_)
            | Error::Cgroup(_)
            | Error::Systemd(_)
            | Error::Slices(_)
            | Error::Resize(_)
            | Error::Network(_)
            | Error::SetupAndTeardown { .. }
            | Error::Teardown { .. } => Status::internal(message),
            // An NRI plugin's refusal, as a plain error in CRI-O and containerd.
            Error::Refused { .. } => Status::unknown(message),
        }
    }
}

impl ToStatus for StoreError {
    fn to_status(&self) -> Status {
        let message = self.to_string();
        if out_of_space(self) {
            return Status::resource_exhausted(message);
        }
        match self {
            StoreError::Reference(_) => Status::invalid_argument(message),
            StoreError::Blocked { .. } => Status::permission_denied(message),
            StoreError::Client { source, .. } => match source {
                ClientError::Unauthorized { .. } | ClientError::PlainHttpRealm { .. } => {
                    Status::unauthenticated(message)
                }
                ClientError::NotFound { .. } => Status::not_found(message),
                ClientError::Stalled { .. } => Status::deadline_exceeded(message),
                ClientError::Status { .. }
                | ClientError::Http { .. }
                | ClientError::TooLarge { .. }
                | ClientError::Challenge { .. } => Status::unavailable(message),
            },
            StoreError::Manifest { .. } => Status::failed_precondition(message),
            StoreError::DigestMismatch { .. } | StoreError::LayerCount { .. } => {
                Status::data_loss(message)
            }
            StoreError::Unpack { .. } => Status::failed_precondition(message),
            StoreError::Registries(_) | StoreError::Io { .. } => Status::internal(message),
            // CRI-O passes containers/storage's "image used by container"
            // error on as is: UNKNOWN.
            StoreError::InUse { .. } => Status::unknown(message),
        }
    }
}

/// An NRI plugin's error or refusal: a plain error (UNKNOWN) in CRI-O and
/// containerd alike; the message names the plugin.
impl ToStatus for berth_nri::Error {
    fn to_status(&self) -> Status {
        Status::unknown(self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes_as_cri_o_answers() {
        let cases: Vec<(Box<dyn ToStatus>, Code)> = vec![
            (
                Box::new(containers::Error::NotFound("c".into())),
                Code::NotFound,
            ),
            (
                Box::new(containers::Error::NameReserved {
                    name: "k8s_x".into(),
                    holder: "c".into(),
                }),
                Code::AlreadyExists,
            ),
            (
                Box::new(berth_sandbox::Error::NotFound("p".into())),
                Code::NotFound,
            ),
            (
                Box::new(RequestError::Unsupported {
                    field: "f".into(),
                    reason: "r".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                Box::new(ResourceError {
                    field: "cpu_shares".into(),
                    message: "must not be negative".into(),
                }),
                Code::InvalidArgument,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.to_status().code(), code);
        }
    }

    #[test]
    fn a_full_disk_anywhere_in_the_chain_is_resource_exhausted() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let err = containers::Error::Store(berth_runtime::record::StoreError::Io {
            path: "/x".into(),
            source: full,
        });
        assert_eq!(err.to_status().code(), Code::ResourceExhausted);
    }
}
