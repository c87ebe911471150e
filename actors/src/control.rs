//! A handle to a running job, for requests from outside it (a signal handler, an
//! embedding program): stop with a savepoint.

use crate::master::{JobMaster, StopRequested};
use actix::Addr;
use std::sync::{Arc, Mutex};

/// Clone it, pass one to [`crate::JobGraph::run_with`], keep the other. Requests
/// made before the job has started are delivered when it starts.
#[derive(Clone, Default)]
pub struct JobControl {
    state: Arc<Mutex<ControlState>>,
}

#[derive(Default)]
struct ControlState {
    stop_requested: bool,
    master: Option<Addr<JobMaster>>,
}

impl JobControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stop the job gracefully: take a savepoint (sources emit nothing after it),
    /// let every sink commit what it covers, then end. The job's report names the
    /// savepoint; running the job again resumes from it. Needs checkpointing.
    /// Safe to call from any thread, any number of times.
    pub fn stop_with_savepoint(&self) {
        let mut state = self.state.lock().expect("job control lock");
        state.stop_requested = true;
        if let Some(master) = &state.master {
            master.do_send(StopRequested);
        }
    }

    /// The job's master started: pending requests reach it now.
    pub(crate) fn attach(&self, master: Addr<JobMaster>) {
        let mut state = self.state.lock().expect("job control lock");
        if state.stop_requested {
            master.do_send(StopRequested);
        }
        state.master = Some(master);
    }
}
