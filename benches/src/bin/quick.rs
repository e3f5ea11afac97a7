//! Scratch: quick N=16 fan-out timing.
use benches::fanout::{Fanout, System};
use std::time::Instant;
fn run(f: &mut dyn Fanout, iters: u64) -> f64 {
    let t = Instant::now();
    for _ in 0..iters { f.publish_once(); }
    t.elapsed().as_nanos() as f64 / iters as f64
}
fn main() {
    let secs: f64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(0.0);
    let n = 16;
    let mut fs: Vec<Box<dyn Fanout>> = System::ALL.iter().map(|s| s.fixture(n)).collect();
    let which: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(0);
    if secs > 0.0 { let t = Instant::now(); while t.elapsed().as_secs_f64() < secs { for _ in 0..1024 { fs[which].publish_once(); } } return; }
    for f in fs.iter_mut() { run(&mut **f, 200_000); }
    let mut res = vec![Vec::new(); fs.len()];
    for _ in 0..9 { for (i, f) in fs.iter_mut().enumerate() { res[i].push(run(&mut **f, 300_000)); } }
    for (i, f) in fs.iter().enumerate() { res[i].sort_by(|a, b| a.partial_cmp(b).unwrap()); println!("{:20} {:8.1} ns/publish", f.name(), res[i][4]); }
    println!("ratio {:.3}", res[0][4] / res[1][4]);
}
