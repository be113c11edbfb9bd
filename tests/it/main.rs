//! pgbb's integration tests: the real binary against real, throwaway PostgreSQL clusters.

mod harness;

mod backup;
mod compress;
mod docs;
mod failures;
mod faults;
mod hostile;
mod integrity;
mod preflight;
mod slave;
mod standby;
mod tablespaces;
mod tls;
mod wal_loop;
