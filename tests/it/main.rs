//! pgbb's integration tests: the real binary against real, throwaway PostgreSQL clusters.

mod harness;

mod backup;
mod batch;
mod compress;
mod delta;
mod dest_lock;
mod dest_safety;
mod docs;
mod failures;
mod faults;
mod hostile;
mod integrity;
mod libpq;
mod preflight;
mod retry;
mod slave;
mod special_files;
mod standby;
mod streams;
mod tablespaces;
mod tls;
mod wal_loop;
