//! `ApiError`: every failure of the control API becomes JSON with a machine-readable
//! code and a human message.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tessera_node::NodeError;
use tessera_runtime::RuntimeError;
use tessera_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        let message = error.to_string();
        let (status, code) = match &error {
            NodeError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            NodeError::Migration { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "migration_failed"),
            NodeError::Data(_) => (StatusCode::INTERNAL_SERVER_ERROR, "data"),
            NodeError::Events(_) => (StatusCode::SERVICE_UNAVAILABLE, "events"),
            NodeError::Runtime(RuntimeError::Engine(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            NodeError::Runtime(RuntimeError::ArtifactMismatch { .. }) => {
                (StatusCode::BAD_REQUEST, "digest_mismatch")
            }
            NodeError::Runtime(RuntimeError::ReuseConcurrency { .. }) => {
                (StatusCode::BAD_REQUEST, "invalid")
            }
            NodeError::Runtime(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_component"),
            NodeError::DataDirInUse { .. } | NodeError::DataDir { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            NodeError::Store(store) => match store {
                StoreError::NoSuchApp(_)
                | StoreError::NoSuchService { .. }
                | StoreError::NoSuchRevision { .. } => (StatusCode::NOT_FOUND, "not_found"),
                StoreError::NoSuchArtifact(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "missing_artifact")
                }
                StoreError::InvalidDigest(_) => (StatusCode::BAD_REQUEST, "invalid_digest"),
                StoreError::InvalidTraffic(_) => (StatusCode::BAD_REQUEST, "invalid_traffic"),
                StoreError::RouteConflict { .. } => (StatusCode::CONFLICT, "route_conflict"),
                StoreError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
                StoreError::Unavailable { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable")
                }
                StoreError::NoEarlierRevision { .. } => {
                    (StatusCode::CONFLICT, "no_earlier_revision")
                }
                StoreError::EmptyDeploy(_) | StoreError::DuplicateService { .. } => {
                    (StatusCode::BAD_REQUEST, "invalid")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            },
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{message}");
        }
        ApiError::new(status, code, message)
    }
}
