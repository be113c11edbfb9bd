//! Throughput of the page checksum and CRC-32C on this machine: `cargo run --release --example checksum_speed`.
use std::time::Instant;
fn main() {
    let page: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    let t = Instant::now();
    let mut x = 0u32;
    for b in 0..100_000u32 {
        x ^= pgbb::checksum::page_checksum(&page, b) as u32;
    }
    let e = t.elapsed();
    println!(
        "page_checksum: {:.2} ms per 100k pages ({:.2} GB/s) {x}",
        e.as_secs_f64() * 1e3,
        100_000.0 * 8192.0 / e.as_secs_f64() / 1e9
    );
    let data = vec![1u8; 1 << 30];
    let t = Instant::now();
    let c = crc32c::crc32c(&data);
    let e = t.elapsed();
    println!("crc32c: {:.2} GB/s {c}", 1.0 / e.as_secs_f64() * 1.07);
}
