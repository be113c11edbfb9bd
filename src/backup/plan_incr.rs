//! Phase 5 for `-i OLD_MANIFEST`: once the backup has started, the earlier backup is checked
//! against this one's start, the WAL summarizer is waited for, and the summaries covering the
//! range are merged into one table of changed blocks; then each listed file is planned as
//! core plans it (`incremental::method`): whole, or as `INCREMENTAL.<name>` with only its
//! changed blocks. pg_control is held back for last.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::incremental::base::{self, Base};
use crate::incremental::blockref::BlockTable;
use crate::incremental::method::{self, Context, Method};
use crate::incremental::{format, range, IncrementalError, Stats};
use crate::layout::Layout;
use crate::lsn::Lsn;
use crate::pg::{sql, sql_incr, Session};
use crate::protocol::BlockList;

use super::connect::Server;
use super::destination::Target;
use super::plan::{self, Plan, Work, PIECE, SPLIT_FROM};
use super::start::Started;
use super::Signals;

/// The summarizer may be this long without progress before the backup gives up (as core).
const STUCK_AFTER: Duration = Duration::from_secs(60);
/// How often a wait for the summarizer says so.
const SAY_EVERY: Duration = Duration::from_secs(10);

pub(super) fn incremental(
    server: &mut Server,
    target: &Target,
    jobs: usize,
    base: &Base,
    started: &mut Started,
    sig: &Signals,
) -> Result<Plan, Error> {
    let needed = base::needed(&mut server.ctl, &base.old, started.tli, started.lsn)?;
    started.incremental_from = Some((needed.from_lsn, needed.from_tli));
    wait_for_summaries(&mut server.ctl, started.lsn, sig)?;
    let all = sql_incr::available_summaries(&mut server.ctl)?;
    let summaries = range::covering(&all, &needed).map_err(IncrementalError::Uncovered)?;
    let table = read_table(&mut server.ctl, &summaries)?;
    let (_, relseg_size) = sql::page_geometry(&mut server.ctl)?;
    let layout = plan::list(server, target)?;
    plan::make_directories(&layout, target)?;
    let cx = Context { old: &base.old, table: &table, relseg_size, rules: server.info.caps.layout_rules() };
    let p = plan_files(layout, &cx, jobs, server.common.algorithm)?;
    if let Some(s) = &p.incremental {
        log::info!(
            "-i: {} relation files as INCREMENTAL ({} blocks), {} files whole; {} MB to copy of {} MB",
            s.incremental_files,
            s.blocks,
            p.files as u64 - s.incremental_files,
            p.total >> 20,
            s.full_size >> 20
        );
    }
    Ok(p)
}

/// Waits until the summarizer has passed the backup's start (as core's
/// `WaitForWalSummarization`): a message every 10 s, an error after 60 s without progress.
fn wait_for_summaries(ctl: &mut Session, start: Lsn, sig: &Signals) -> Result<(), Error> {
    let t0 = Instant::now();
    let (mut pending, mut moved, mut said) = (None, Instant::now(), Instant::now());
    loop {
        let st = sql_incr::summarizer_state(ctl)?;
        // Turned off meanwhile: the check of the summaries says what is missing.
        if st.summarized >= start || !sql_incr::summarize_wal(ctl)? {
            return Ok(());
        }
        if pending != Some(st.pending) {
            (pending, moved) = (Some(st.pending), Instant::now());
        } else if moved.elapsed() >= STUCK_AFTER {
            return Err(IncrementalError::Stuck { summarized: st.summarized, start }.into());
        }
        if said.elapsed() >= SAY_EVERY {
            said = Instant::now();
            log::warn!(
                "still waiting for WAL summarization through {start} after {} s (it has reached {} on disk and {} in memory)",
                t0.elapsed().as_secs(),
                st.summarized,
                st.pending
            );
        }
        if let Ok(s) = sig.rx.recv_timeout(Duration::from_millis(100)) {
            return Err(sig.received(Ok(s)));
        }
    }
}

/// The changed blocks of every summary, merged in LSN order.
fn read_table(ctl: &mut Session, summaries: &[sql_incr::Summary]) -> Result<BlockTable, Error> {
    let mut table = BlockTable::default();
    let mut rows = 0;
    for s in summaries {
        rows += sql_incr::summary_rows(ctl, s, |r| table.apply(r))?;
    }
    table.finish();
    log::info!(
        "{} WAL summaries read ({rows} entries): {} blocks changed since the earlier backup",
        summaries.len(),
        table.blocks()
    );
    Ok(table)
}

/// Each file whole or incremental; the queue largest transfer first (large whole files in
/// pieces, as in a full backup).
fn plan_files(
    layout: Layout,
    cx: &Context<'_>,
    jobs: usize,
    algorithm: crate::digest::Algorithm,
) -> Result<Plan, Error> {
    let full_size = layout.total_bytes();
    // As in a full backup: pieces need a checksum that combines.
    let split = jobs > 1 && matches!(algorithm, crate::digest::Algorithm::Crc32c | crate::digest::Algorithm::None);
    let mut stats = Stats { full_size, ..Stats::default() };
    let (mut whole, mut incr) = (Vec::new(), Vec::new());
    for f in &layout.files {
        match method::decide(&f.path, f.size, cx) {
            Method::Full => whole.push(f.clone()),
            Method::Incremental { blocks, truncation_block_length } => {
                stats.incremental_files += 1;
                stats.blocks += blocks.len() as u64;
                let size = format::file_size(blocks.len());
                let list = BlockList { truncation: truncation_block_length, blocks };
                incr.extend(pieces(Work { size, incremental: Some(list), ..Work::whole(f) }, split));
            }
        }
    }
    let mut p = plan::queue(Layout { files: whole, ..layout }, jobs, algorithm, &plan::Compare::default())?;
    for w in incr.iter().filter(|w| w.range.is_some()) {
        p.sizes.insert(w.path.clone(), w.size);
    }
    let pieces = incr.iter().filter(|w| w.range.is_some()).count();
    if pieces > 0 {
        log::info!("large INCREMENTAL files go in {pieces} pieces of up to {} MB, copied in parallel", PIECE >> 20);
    }
    p.total += incr.iter().map(|w| w.range.map_or(w.size, |(_, len)| len)).sum::<u64>();
    p.files += incr.iter().filter(|w| w.range.is_none_or(|(off, _)| off == 0)).count();
    let mut queue: Vec<Work> = p.queue.into_iter().chain(incr).collect();
    // Stable: the pieces of a file stay in order.
    queue.sort_by_key(|w| Reverse(w.size));
    p.queue = queue.into();
    p.incremental = Some(stats);
    Ok(p)
}

/// A large incremental file in pieces of [`PIECE`] bytes of the file (the first holds the
/// header), for several workers at once; a smaller one whole.
fn pieces(w: Work, split: bool) -> Vec<Work> {
    if !split || w.size < SPLIT_FROM {
        return vec![w];
    }
    let mut out = Vec::new();
    let mut off = 0;
    while off < w.size {
        let len = PIECE.min(w.size - off);
        out.push(Work { range: Some((off, len)), ..w.clone() });
        off += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_incremental_files_go_in_pieces_of_whole_blocks() {
        let blocks: Vec<u32> = (0..20_000).map(|b| b * 3).collect();
        let size = format::file_size(blocks.len());
        let w = Work {
            size,
            incremental: Some(BlockList { truncation: 60_000, blocks }),
            ..Work::whole(&crate::layout::FileJob { path: b"base/5/16384".to_vec(), size: 1 << 30 })
        };
        let p = pieces(w.clone(), true);
        assert_eq!(p.len() as u64, size.div_ceil(PIECE));
        assert!(p.iter().all(|x| x.range.is_some_and(|(off, len)| off % 8192 == 0 && len % 8192 == 0)));
        assert_eq!(p.iter().map(|x| x.range.map_or(0, |r| r.1)).sum::<u64>(), size);
        assert_eq!(pieces(w.clone(), false).len(), 1, "no pieces without a checksum that combines");
        let small = Work { size: SPLIT_FROM - 8192, ..w };
        assert_eq!(pieces(small, true).len(), 1);
    }
}
