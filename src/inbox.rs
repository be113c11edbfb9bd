//! A worker's requests, read from stdin by a thread of their own and numbered, so that the
//! one after the request being served can be looked at before it is served (`piece_ahead`).
//! The master keeps two requests in flight for each worker; a worker run by hand holds
//! what it was given that it has not served yet.

use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::sync::{Arc, Condvar, Mutex};

use crate::protocol::MAX_LINE;

/// One request as it came: a line (a file or piece, or a line that is not a request), or a
/// batch header's file lines.
#[derive(Debug)]
pub enum Entry {
    /// The line (with its line end) and whether it was too long (then cut away).
    Line(Vec<u8>, bool),
    /// A `batch<TAB>N` line's N lines (fewer at the end of input), each as [`Entry::Line`].
    Batch(Vec<(Vec<u8>, bool)>),
}

/// What the reader thread found so far.
#[derive(Default)]
struct Queue {
    entries: VecDeque<(u64, Entry)>,
    /// The input ended (`Ok`) or could not be read.
    end: Option<io::Result<()>>,
}

/// The requests read ahead of the worker, the first one numbered 1.
#[derive(Default)]
pub struct Inbox {
    queue: Mutex<Queue>,
    arrived: Condvar,
}

impl Inbox {
    /// Reads `input` (stdin) by a thread of its own until it ends. `batch` says whether a
    /// line is a valid batch header, and of how many lines.
    pub fn start(
        input: impl BufRead + Send + 'static,
        batch: fn(&[u8], bool) -> Option<usize>,
    ) -> io::Result<Arc<Inbox>> {
        let inbox = Arc::new(Inbox::default());
        let filler = inbox.clone();
        std::thread::Builder::new().name("pgbb-inbox".into()).spawn(move || filler.fill(input, batch))?;
        Ok(inbox)
    }

    /// The reader thread's loop.
    fn fill(&self, mut input: impl BufRead, batch: fn(&[u8], bool) -> Option<usize>) {
        let mut seq = 0;
        let end = loop {
            let entry = match read_line(&mut input) {
                Ok(Some((line, too_long))) => match batch(&line, too_long) {
                    Some(n) => match read_lines(&mut input, n) {
                        Ok(lines) => Entry::Batch(lines),
                        Err(e) => break Err(e),
                    },
                    None => Entry::Line(line, too_long),
                },
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            seq += 1;
            self.lock().entries.push_back((seq, entry));
            self.arrived.notify_all();
        };
        self.lock().end = Some(end);
        self.arrived.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next request and its number, waiting for it; `None` at the end of input.
    pub fn next(&self) -> io::Result<Option<(u64, Entry)>> {
        let mut q = self.lock();
        loop {
            if let Some(e) = q.entries.pop_front() {
                return Ok(Some(e));
            }
            match q.end.take() {
                Some(Ok(())) => {
                    q.end = Some(Ok(()));
                    return Ok(None);
                }
                Some(Err(e)) => {
                    // It stays the end: a later call gets the same error.
                    q.end = Some(Err(io::Error::new(e.kind(), e.to_string())));
                    return Err(e);
                }
                None => q = self.arrived.wait(q).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// What `look` makes of request `seq` if it has come and is not served yet.
    pub fn peek<T>(&self, seq: u64, look: impl FnOnce(&Entry) -> Option<T>) -> Option<T> {
        let q = self.lock();
        q.entries.iter().find(|(s, _)| *s == seq).and_then(|(_, e)| look(e))
    }
}

#[cfg(test)]
impl Inbox {
    /// Waits until request `seq` has come, or the input ended.
    fn wait_for(&self, seq: u64) {
        let mut q = self.lock();
        while q.end.is_none() && !q.entries.iter().any(|(s, _)| *s == seq) {
            q = self.arrived.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Reads one line of at most `MAX_LINE` bytes; a longer line is consumed and reported (empty,
/// `true`). `None` at the end of input.
pub fn read_line(r: &mut impl BufRead) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(if buf.is_empty() && !too_long { None } else { Some((buf, too_long)) });
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if !too_long {
            buf.extend_from_slice(&avail[..take]);
            if buf.len() > MAX_LINE + 2 {
                too_long = true;
                buf.clear();
            }
        }
        r.consume(take);
        if done {
            return Ok(Some((buf, too_long)));
        }
    }
}

/// The `n` lines of a batch (fewer at the end of input).
fn read_lines(input: &mut impl BufRead, n: usize) -> io::Result<Vec<(Vec<u8>, bool)>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match read_line(input)? {
            Some(line) => out.push(line),
            None => break,
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(line: &[u8], too_long: bool) -> Option<usize> {
        let text = std::str::from_utf8(line).ok().filter(|_| !too_long)?;
        text.trim_end().strip_prefix("batch\t")?.parse().ok()
    }

    #[test]
    fn requests_are_numbered_batches_are_one_and_the_next_can_be_looked_at() {
        let input = b"a\nbatch\t2\nb\nc\nd\n".to_vec();
        let inbox = Inbox::start(io::Cursor::new(input), batch).unwrap();
        let Some((1, Entry::Line(a, false))) = inbox.next().unwrap() else { panic!("first") };
        assert_eq!(a, b"a\n");
        // Request 3 comes after the batch (request 2).
        inbox.wait_for(3);
        let seen = inbox.peek(3, |e| match e {
            Entry::Line(l, _) => Some(l.clone()),
            Entry::Batch(_) => None,
        });
        assert_eq!(seen.as_deref(), Some(&b"d\n"[..]));
        assert!(inbox.peek(2, |e| matches!(e, Entry::Batch(l) if l.len() == 2).then_some(())).is_some());
        let Some((2, Entry::Batch(lines))) = inbox.next().unwrap() else { panic!("batch") };
        assert_eq!(lines, vec![(b"b\n".to_vec(), false), (b"c\n".to_vec(), false)]);
        assert!(matches!(inbox.next().unwrap(), Some((3, Entry::Line(_, false)))));
        assert!(inbox.next().unwrap().is_none());
        assert!(inbox.next().unwrap().is_none(), "the end stays the end");
        assert!(inbox.peek(3, |_| Some(())).is_none(), "a served request is gone");
    }

    /// Input that gives one line, then fails.
    struct Failing(bool);

    impl io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if std::mem::replace(&mut self.0, true) {
                return Err(io::Error::other("gone"));
            }
            buf[..2].copy_from_slice(b"a\n");
            Ok(2)
        }
    }

    #[test]
    fn a_read_error_ends_the_requests_for_good() {
        let inbox = Inbox::start(io::BufReader::new(Failing(false)), batch).unwrap();
        assert!(matches!(inbox.next().unwrap(), Some((1, Entry::Line(_, false)))));
        assert_eq!(inbox.next().unwrap_err().to_string(), "gone");
        assert_eq!(inbox.next().unwrap_err().to_string(), "gone", "and again");
    }

    #[test]
    fn long_lines_are_cut_and_reported() {
        let long = "x".repeat(MAX_LINE * 3);
        let input = format!("a\n{long}\nb");
        let mut r = io::Cursor::new(input.into_bytes());
        assert_eq!(read_line(&mut r).unwrap(), Some((b"a\n".to_vec(), false)));
        assert_eq!(read_line(&mut r).unwrap(), Some((Vec::new(), true)));
        assert_eq!(read_line(&mut r).unwrap(), Some((b"b".to_vec(), false)));
        assert_eq!(read_line(&mut r).unwrap(), None);
    }
}
