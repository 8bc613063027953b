//! The NATS client's own runtime, and the way synchronous callers wait on it.

use std::future::Future;

use crate::ClusterError;

/// A small multi-thread runtime that drives the NATS client and the cluster's background
/// tasks. Dropped from anywhere (even from inside another runtime) without blocking.
pub(crate) struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bridge {
    pub(crate) fn new() -> Result<Bridge, ClusterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tessera-nats")
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Setup {
                what: "the NATS client's runtime".into(),
                message: e.to_string(),
            })?;
        Ok(Bridge {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives until the bridge is dropped")
            .handle()
    }

    /// Runs `future` on the client's runtime and waits for its output on this thread.
    /// Callable from any thread, including a worker of another runtime (which it blocks
    /// for the call, like a local disk read would).
    pub(crate) fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        use futures_util::FutureExt;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            // A panic is carried to the caller's thread, where it belongs.
            let _ = tx.send(std::panic::AssertUnwindSafe(future).catch_unwind().await);
        });
        match rx
            .recv()
            .expect("the client's runtime runs every task it was given to completion")
        {
            Ok(output) => output,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Starts a background task on the client's runtime.
    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle().spawn(future)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
