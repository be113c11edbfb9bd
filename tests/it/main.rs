//! pgbb's integration tests: the real binary against real, throwaway PostgreSQL clusters.

mod harness;

mod automation;
mod backup;
mod batch;
mod compress;
mod delta;
mod dest_lock;
mod dest_safety;
mod docs;
mod failures;
mod faults;
mod helper;
mod hostile;
mod incremental;
mod integrity;
mod libpq;
mod max_lag;
mod packaging;
mod preflight;
mod retry;
mod slave;
mod special_files;
mod standby;
mod standby_cases;
mod streams;
mod tablespaces;
mod tls;
mod wal_loop;
