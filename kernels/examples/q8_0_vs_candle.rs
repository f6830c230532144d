//! Times our Q8_0 matmul against candle's `QMatMul` on the decoder's shapes (SmolLM2-135M: the
//! MLP's 1536 x 576 and 576 x 1536, the 49152 x 576 lm_head, and the attention's 576 x 576 and
//! 192 x 576) for 1, 4, 8 and 16 activation rows, and checks that both give the same numbers.
//! Medians of many calls, in microseconds, activation quantization included on both sides; ours
//! on the persistent pool (what the engine uses), on threads spawned per call, and on one thread.
//!
//! ```text
//! cargo run --release -j2 -p tritium-kernels --example q8_0_vs_candle
//! ```
//! `--quick` runs fewer repetitions.

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use tritium_kernels::{BlockQ8_0, Parallel, Q8_0Matrix, Q8_0Rows, ScopedThreads, Serial, ThreadPool};

fn median(mut f: impl FnMut(), budget: Duration) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 15 || (start.elapsed() < budget && times.len() < 5000) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 150 } else { 800 });
    let device = Device::Cpu;
    let pool = ThreadPool::global();
    let scoped = ScopedThreads::available();
    println!("threads: pool {}, scoped {}", pool.threads(), scoped.threads());
    let nothing = |_: usize| {};
    let t_spawn = median(|| scoped.for_each(2, &nothing), budget);
    let t_handoff = median(|| pool.for_each(2, &nothing), budget);
    println!("an empty 2-task call: scoped threads {t_spawn:.1} us, pool {t_handoff:.1} us");
    println!(
        "{:>13} {:>3} {:>10} {:>10} {:>10} {:>10} {:>7} {:>9}",
        "shape", "m", "candle", "ours/pool", "ours/scope", "ours/1thr", "speedup", "rel diff"
    );
    for (n, k) in [(1536, 576), (576, 1536), (49152, 576), (576, 576), (192, 576)] {
        let w = Tensor::randn(0f32, 0.05, (n, k), &device)?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        let ours = Q8_0Matrix::new(BlockQ8_0::from_bytes(&q.data()?)?, n, k)?;
        let theirs = QMatMul::from_qtensor(q)?;
        for m in [1usize, 4, 8, 16] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &device)?;
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            let mut out = vec![0f32; m * n];
            let run = |parallel: &dyn Parallel, out: &mut [f32]| {
                let a = Q8_0Rows::quantize(&xs, m, k).expect("shapes fit");
                ours.matmul(&a, out, parallel).expect("shapes fit");
            };
            let t_candle = median(|| drop(theirs.forward(&x).expect("candle runs")), budget);
            let t_pool = median(|| run(pool, &mut out), budget);
            let t_scope = median(|| run(&scoped, &mut out), budget);
            let t_one = median(|| run(&Serial, &mut out), budget);
            run(pool, &mut out);
            let reference = theirs.forward(&x)?.flatten_all()?.to_vec1::<f32>()?;
            let largest = reference.iter().fold(0f32, |d, x| d.max(x.abs()));
            let diff = out.iter().zip(&reference).fold(0f32, |d, (a, b)| d.max((a - b).abs())) / largest;
            println!(
                "{:>13} {m:>3} {t_candle:>10.1} {t_pool:>10.1} {t_scope:>10.1} {t_one:>10.1} {:>6.1}x {diff:>9.2e}",
                format!("{n}x{k}"),
                t_candle / t_pool
            );
        }
    }
    Ok(())
}
