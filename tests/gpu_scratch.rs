use marco::backend::gpu::{GpuBackend, GpuOptions};
use marco::backend::{Backend, BufId, MatJob};
use marco::gguf::GgufFile;
use marco::models::DEFAULT_MODEL;
use std::sync::Arc;
use std::time::Instant;

#[test]
fn timing() {
    let file = Arc::new(GgufFile::open(&DEFAULT_MODEL.cached_path().unwrap()).unwrap());
    let mut g = GpuBackend::new(&GpuOptions::default()).unwrap();
    for (name, n) in [
        ("blk.0.ffn_gate.weight", 1usize),
        ("blk.0.ffn_gate.weight", 40),
        ("blk.0.ffn_down.weight", 1),
        ("output.weight", 1),
    ] {
        let w = g.load_weight(&file, name).unwrap();
        let info = file.tensor_info(name).unwrap();
        let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
        let x = g.alloc(n * cols).unwrap();
        let y = g.alloc(n * rows).unwrap();
        let job = MatJob {
            weight: w,
            bias: None,
            out: y,
        };
        let mut buf = vec![0f32; 1];
        g.matmul(x, n, &[job]).unwrap();
        g.read(y, 0, &mut buf).unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            g.matmul(x, n, &[job]).unwrap();
        }
        g.read(y, 0, &mut buf).unwrap();
        eprintln!(
            "{name} n={n}: {:.1} ms",
            t.elapsed().as_secs_f64() * 1000.0 / 3.0
        );
        let _ = BufId(0);
    }
}
