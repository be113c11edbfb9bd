//! Small files travel to a worker in batches, which it reads (or compares) with one query:
//! which requests of the queue go together.

use std::collections::VecDeque;

use crate::protocol::MAX_BATCH;

use super::plan::Work;

/// Files up to this size (as listed) go in batches.
pub(super) const SMALL_FILE: u64 = 64 << 10;
/// Most bytes (as listed) in one batch.
pub(super) const BATCH_BYTES: u64 = 4 << 20;
/// Fewest files a batch is cut to when the queue runs short.
const MIN_BATCH: usize = 16;

/// Whether `w` may go in a batch: a whole small file whose name is UTF-8 (a name that is not
/// is found by its components, one file per query).
fn batchable(w: &Work) -> bool {
    w.range.is_none() && w.size <= SMALL_FILE && std::str::from_utf8(&w.path).is_ok()
}

/// The next request from the front of `queue`: one file, or a batch of small files of the
/// same kind (all copied, or all compared), at most [`MAX_BATCH`] files and [`BATCH_BYTES`],
/// taken in queue order past the files of the other kind (a resume's small files are of both
/// kinds, mixed). Near the end of the queue batches shrink, so that its last files are spread
/// over the `spread` requests the workers can have in flight. Empty when the queue is.
///
/// `prefer`: the request starts with the first work whose `reads_copy` is this, wherever it
/// is in the queue, if there is any. A `--delta` resume gives its workers one kind each:
/// one reads the copy (its disk) while the other fetches what the copy lacks (the link);
/// in queue order both would often do the same kind at once, and leave the other idle.
pub(super) fn next_request(queue: &mut VecDeque<Work>, spread: usize, prefer: Option<bool>) -> Vec<Work> {
    if let Some(k) = prefer {
        if let Some(at) = queue.iter().position(|w| w.reads_copy == k).filter(|&at| at > 0) {
            let w = queue.remove(at);
            if let Some(w) = w {
                queue.push_front(w);
            }
        }
    }
    let Some(first) = queue.pop_front() else { return Vec::new() };
    if !batchable(&first) {
        return vec![first];
    }
    let limit = MAX_BATCH.min((queue.len() + 1).div_ceil(spread.max(1)).max(MIN_BATCH));
    let (compare, mut bytes) = (first.compare, first.size);
    let mut taken = vec![false; queue.len()];
    let mut n = 1;
    for (i, next) in queue.iter().enumerate() {
        if n >= limit {
            break;
        }
        if !batchable(next) || next.compare != compare {
            continue;
        }
        if bytes + next.size > BATCH_BYTES {
            break;
        }
        bytes += next.size;
        taken[i] = true;
        n += 1;
    }
    let mut out = Vec::with_capacity(n);
    out.push(first);
    let mut rest = VecDeque::with_capacity(queue.len() + 1 - n);
    for (w, take) in queue.drain(..).zip(taken) {
        if take {
            out.push(w);
        } else {
            rest.push_back(w);
        }
    }
    *queue = rest;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(path: &str, size: u64, compare: bool) -> Work {
        Work { path: path.as_bytes().to_vec(), range: None, compare, size, incremental: None, reads_copy: compare }
    }

    fn sizes(q: &mut VecDeque<Work>, spread: usize) -> Vec<usize> {
        std::iter::from_fn(|| Some(next_request(q, spread, None)).filter(|b| !b.is_empty())).map(|b| b.len()).collect()
    }

    #[test]
    fn large_files_pieces_and_odd_names_go_alone() {
        let mut q: VecDeque<Work> = [
            work("base/5/big", SMALL_FILE + 1, false),
            Work { range: Some((0, 8192)), ..work("base/5/piece", 200 << 20, false) },
            work("base/5/a", 8192, false),
            Work { path: b"base/5/\xff".to_vec(), ..work("", 8192, false) },
            work("base/5/b", 8192, false),
        ]
        .into();
        // a and b go together, past the odd name between them.
        assert_eq!(sizes(&mut q, 1), vec![1, 1, 2, 1]);
    }

    #[test]
    fn small_files_are_batched_by_kind_count_and_bytes() {
        let mut q: VecDeque<Work> = (0..2500).map(|i| work(&format!("base/5/{i}"), 100, i >= 2100)).collect();
        // At most MAX_BATCH files, never copies and compares together.
        assert_eq!(sizes(&mut q, 1), vec![1000, 1000, 100, 400]);
        let mut q: VecDeque<Work> = (0..200).map(|i| work(&format!("f{i}"), SMALL_FILE, false)).collect();
        let per = (BATCH_BYTES / SMALL_FILE) as usize;
        assert_eq!(sizes(&mut q, 1), vec![per, per, per, 200 - 3 * per]);
        // An empty file weighs nothing, but counts.
        let mut q: VecDeque<Work> = (0..1001).map(|i| work(&format!("f{i}"), 0, false)).collect();
        assert_eq!(sizes(&mut q, 1), vec![1000, 1]);
        let order: Vec<Vec<u8>> = {
            let mut q: VecDeque<Work> = (0..40).map(|i| work(&format!("f{i}"), 10, false)).collect();
            std::iter::from_fn(|| Some(next_request(&mut q, 1, None)).filter(|b| !b.is_empty()))
                .flatten()
                .map(|w| w.path)
                .collect()
        };
        let want: Vec<Vec<u8>> = (0..40).map(|i| format!("f{i}").into_bytes()).collect();
        assert_eq!(order, want, "the queue's order is kept");
    }

    #[test]
    fn a_preferred_kind_is_taken_first_wherever_it_is() {
        let piece = |p: &str, reads_copy: bool| Work {
            range: Some((0, 64 << 20)),
            compare: true,
            reads_copy,
            ..work(p, 1 << 30, true)
        };
        let mut q: VecDeque<Work> =
            [piece("t1", false), piece("t2", false), piece("c1", true), piece("t3", false)].into();
        let names = |r: Vec<Work>| r.into_iter().map(|w| String::from_utf8(w.path).unwrap()).collect::<Vec<_>>();
        assert_eq!(names(next_request(&mut q, 2, Some(true))), ["c1"]);
        assert_eq!(names(next_request(&mut q, 2, Some(false))), ["t1"]);
        assert_eq!(names(next_request(&mut q, 2, Some(true))), ["t2"], "none of that kind left: the front");
        assert_eq!(names(next_request(&mut q, 2, None)), ["t3"]);
        // Small files still go in batches of one kind, from the first of the preferred kind
        // on, past those of the other kind.
        let mut q: VecDeque<Work> =
            [work("a", 10, false), work("b", 10, true), work("c", 10, false), work("d", 10, true)].into();
        assert_eq!(names(next_request(&mut q, 1, Some(true))), ["b", "d"]);
        assert_eq!(names(next_request(&mut q, 1, Some(true))), ["a", "c"]);
        let mut q: VecDeque<Work> = (0..100).map(|i| work(&format!("f{i}"), 10, i % 2 == 0)).collect();
        assert_eq!(sizes(&mut q, 1), vec![50, 50], "mixed kinds, one batch each");
    }

    #[test]
    fn the_tail_of_the_queue_is_spread_over_the_workers() {
        // Four requests in flight (two workers): 4000 files go in batches of 1000 while the
        // queue is long, then smaller ones, never below MIN_BATCH.
        let mut q: VecDeque<Work> = (0..6000).map(|i| work(&format!("f{i}"), 10, false)).collect();
        let got = sizes(&mut q, 4);
        assert_eq!(got.iter().sum::<usize>(), 6000);
        assert_eq!(got[0], 1000);
        assert!(got.iter().all(|&n| n >= MIN_BATCH || n == *got.last().unwrap()), "{got:?}");
        assert!(got.len() >= 8, "the tail is cut into smaller batches: {got:?}");
        let mut q: VecDeque<Work> = (0..40).map(|i| work(&format!("f{i}"), 10, false)).collect();
        assert_eq!(sizes(&mut q, 4), vec![16, 16, 8]);
    }
}
