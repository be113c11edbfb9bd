//! `--delta`: what makes refreshing an older copy in DEST safe — proof that DEST is a copy of
//! this cluster ([`origin`]) and a listing of what DEST holds ([`local`]). The plan that
//! compares and removes is `backup::plan_delta`; the per-file comparison is `compare`.

pub mod local;
pub mod origin;
pub mod resident;
pub mod trust;

/// What a refresh did: bytes of DEST's files compared with the server's, entries removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refresh {
    pub compared: u64,
    pub removed: u64,
}
