//! Page checksum failures, reported as core reports them, and the count of verified pages.

/// Page checksum failures, reported as core reports them: at most five per file, then a
/// total per file and one overall.
#[derive(Default)]
pub(super) struct PageReport {
    per_file: std::collections::BTreeMap<String, u64>,
    pub total: u64,
    /// Pages whose checksum the workers compared.
    pub verified: u64,
}

/// Failures shown per file before the rest are only counted.
const PAGE_FAILURES_SHOWN: u64 = 5;

impl PageReport {
    pub fn add(&mut self, path: &str, block: u32, calculated: u16, expected: u16) {
        let n = self.per_file.entry(path.to_string()).or_insert(0);
        *n += 1;
        self.total += 1;
        if *n <= PAGE_FAILURES_SHOWN {
            log::warn!("checksum verification failed in file \"./{path}\", block {block}: calculated {calculated:X} but expected {expected:X}");
        }
        if *n == PAGE_FAILURES_SHOWN + 1 {
            log::warn!("further checksum verification failures in file \"./{path}\" will not be reported");
        }
    }

    pub fn print_totals(&self) {
        log::info!("{} data pages verified", self.verified);
        for (path, n) in &self.per_file {
            log::warn!("file \"./{path}\" has a total of {n} checksum verification failures");
        }
        if self.total > 0 {
            log::warn!("{} checksum verification failures in total", self.total);
        }
    }
}
