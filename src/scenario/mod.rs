//! Scenario replay runs: a topology, its input, run settings and a fault schedule;
//! the runner performs a failure-free reference run and the faulty run (relaunching
//! the process after each kill) and checks the output against the expectation.

pub mod chaos;
pub mod check;
pub mod child;
pub mod faults;
pub mod inject;
pub mod runner;
pub mod spec;
pub mod suite;
