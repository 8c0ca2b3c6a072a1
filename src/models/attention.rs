//! Attention in one place: `softmax(q kᵀ / scale + mask) v` over heads, for the UNet and its motion modules,
//! the VAE's mid-block, CLIP and ImageReward.
//!
//! The score tensor `[N, H, L, S]` is what runs out of memory at real sizes: SD 1.5's first level at 16 frames
//! x CFG is N = 32, 8 heads, L = S = 4096, 17 GB of f32 scores for one layer. So scores are computed in
//! chunks over (batch x heads) and query rows, each at most the **score budget** (default
//! [`DEFAULT_SCORE_BUDGET`]); softmax runs along the key axis, which a chunk always holds whole, so every
//! chunk's rows are exactly the rows of the full product. Below the budget the whole product is computed at
//! once, as before.
//!
//! The budget is per thread ([`with_score_budget`]): the models run on the worker thread, and tests can
//! force the chunked path on their own thread without touching others.
//!
//! **Kernels.** [`Kernel::Fused`] (the default) takes the fastest memory-bounded kernel the device has. On the CPU:
//! unmasked products with at least [`CPU_BLOCKS_MIN_KEYS`] keys run on stepstone-kernels' attention (blocks of 128
//! query rows against all keys, exact softmax
//! with a vectorised exp, gemm for both products; 128 x keys scores per thread, so no chunking), masked ones on
//! burn flex's flash kernel (online softmax; about 3x slower at 4,096 tokens, bound by libm's scalar `expf`); both
//! run one thread per batch x head, so products with fewer of those than threads, such as the VAE's one-head
//! mid-block, stay on the reference kernel's threaded matmuls. On the cubecl back-ends (wgpu, Vulkan, CUDA) burn's flash kernels, chosen by
//! autotune (stepstone's `autotune` feature, part of the `vulkan` and `cuda` builds: without it the launcher always
//! takes its fallback, which materialises the scores of the chunk it is given). Those kernels ignore an additive mask,
//! so masked products stay on the reference kernel there; their head size must be a multiple of the tensor-core tile,
//! so q, k and v are zero-padded to a multiple of [`CUBE_HEAD_MULTIPLE`] (SD 1.5's first level has head size 40) and
//! the output cut back; and because burn falls back to materialising the whole score tensor when no flash kernel fits,
//! the chunk plan is kept on those devices. [`Kernel::Reference`] (`softmax(q kᵀ) v` as three kernels, in chunks) is
//! the arithmetic of the Python references, kept for parity checks and selectable per thread ([`with_kernel`]).

use std::cell::Cell;

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention as fused_attention;
use burn::tensor::ops::AttentionModuleOptions;

/// The largest score tensor computed at once, in bytes, unless a thread sets another.
pub const DEFAULT_SCORE_BUDGET: usize = 256 << 20;

/// Bytes per score element (the scores are f32).
const SCORE_BYTES: usize = 4;

/// On the cubecl back-ends, head sizes are padded to a multiple of this for the flash kernels (the k of
/// an f16 tensor-core instruction; a multiple of it also suits the f32 unit kernels).
pub const CUBE_HEAD_MULTIPLE: usize = 16;

/// Which kernel computes an attention product (also `stepstone bench --attention`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kernel {
    /// burn's fused attention where the device has one (see the module docs), else [`Kernel::Reference`].
    Fused,
    /// `softmax(q kᵀ / scale + mask) v` as three kernels, in chunks within the score budget.
    Reference,
}

thread_local! {
    static BUDGET: Cell<usize> = const { Cell::new(DEFAULT_SCORE_BUDGET) };
    static KERNEL: Cell<Kernel> = const { Cell::new(Kernel::Fused) };
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Fused => "fused",
            Kernel::Reference => "reference",
        }
    }
}

/// The attention kernel of this thread.
pub fn kernel() -> Kernel {
    KERNEL.with(Cell::get)
}

/// Runs `f` with this thread's attention kernel set to `kernel`, then restores the previous one.
pub fn with_kernel<R>(kernel: Kernel, f: impl FnOnce() -> R) -> R {
    with_setting(&KERNEL, kernel, f)
}

/// Runs `f` with a thread-local setting replaced by `value`, restoring the previous value afterwards (also
/// when `f` panics).
fn with_setting<T: Copy + 'static, R>(
    setting: &'static std::thread::LocalKey<Cell<T>>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(setting, setting.with(|c| c.replace(value)));
    f()
}

/// The score budget of this thread, in bytes.
pub fn score_budget() -> usize {
    BUDGET.with(Cell::get)
}

/// Runs `f` with this thread's score budget set to `bytes` (at least one score row is always computed at
/// once), then restores the previous budget.
pub fn with_score_budget<R>(bytes: usize, f: impl FnOnce() -> R) -> R {
    with_setting(&BUDGET, bytes, f)
}

/// Runs `f` with every attention of this thread on the reference kernel, in chunks of at most `bytes` of
/// scores: how the parity tests check the chunked path.
pub fn with_reference_chunks<R>(bytes: usize, f: impl FnOnce() -> R) -> R {
    with_kernel(Kernel::Reference, || with_score_budget(bytes, f))
}

/// How a chunked attention splits its work: `batch` rows of (batch x heads) and `rows` query rows at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunks {
    pub batch: usize,
    pub rows: usize,
}

/// The chunk sizes for scores of `batch` x `rows` x `keys` within `budget` bytes: whole when they fit, else
/// as many query rows as fit for one (batch x head), then as many of those as fit. Never zero.
pub fn chunks(batch: usize, rows: usize, keys: usize, budget: usize) -> Chunks {
    let row_bytes = keys.max(1).saturating_mul(SCORE_BYTES);
    let fit_rows = (budget / row_bytes).max(1);
    let rows_at_once = rows.max(1).min(fit_rows);
    let fit_batch = (budget / row_bytes.saturating_mul(rows_at_once)).max(1);
    Chunks { batch: batch.max(1).min(fit_batch), rows: rows_at_once }
}

/// Multi-head attention on `q` [N, H, L, d], `k` and `v` [N, H, S, d] -> [N, H, L, d]. The scores are
/// divided by `score_divisor` when given (`sqrt(d)`, as transformers' BERT does; callers whose reference
/// scales `q` beforehand do that and pass `None`, so the arithmetic stays exactly the reference's), and
/// `mask` is added: any shape that broadcasts to [N, H, L, S] with each
/// of its first three sizes either 1 or the full size.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    score_divisor: Option<f64>,
    mask: Option<Tensor<4>>,
) -> Tensor<4> {
    let [n, h, l, d] = q.dims();
    let s = k.dims()[2];
    let dv = v.dims()[3];
    let path = match kernel() {
        Kernel::Reference => Path::Reference,
        // The CPU flash kernel is memory-bounded by itself (no chunks), but it runs one thread per
        // (batch x head): with fewer of those than threads (the VAE's one-head mid-block attention) the
        // reference kernel's threaded matmuls are faster.
        Kernel::Fused if super::is_cpu(&q.device()) && cpu_takes_fused(n * h) => {
            return match mask {
                None if s >= CPU_BLOCKS_MIN_KEYS => cpu_blocks(q, k, v, score_divisor),
                mask => fused(q, k, v, score_divisor, mask),
            };
        }
        Kernel::Fused if super::is_cpu(&q.device()) => Path::Reference,
        Kernel::Fused if mask.is_none() => Path::Cube,
        Kernel::Fused => Path::Reference,
    };
    let product = |q, k, v, mask| match path {
        Path::Cube => fused_padded(q, k, v, score_divisor),
        Path::Reference => scores_times_values(q, k, v, score_divisor, mask),
    };
    let plan = chunks(n * h, l, s, score_budget());
    if plan.batch >= n * h && plan.rows >= l {
        return product(q, k, v, mask);
    }
    // Flatten (batch, heads) so that one axis can be cut anywhere; the mask follows when it has those axes.
    let (b, q, k, v) = (n * h, q.reshape([n * h, 1, l, d]), k.reshape([n * h, 1, s, d]), v.reshape([n * h, 1, s, dv]));
    let mask = mask.map(|m| {
        let [mn, mh, ml, ms] = m.dims();
        // Broadcast over the axes the mask lacks, then flatten like q (a mask is small next to the scores:
        // it lacks the query axis, or the keys are few).
        m.expand([if mn == 1 { n } else { mn }, if mh == 1 { h } else { mh }, ml, ms]).reshape([n * h, 1, ml, ms])
    });
    let mut batches = Vec::with_capacity(b.div_ceil(plan.batch));
    for b0 in (0..b).step_by(plan.batch) {
        let b1 = (b0 + plan.batch).min(b);
        let (kb, vb) = (k.clone().slice([b0..b1]), v.clone().slice([b0..b1]));
        let mut rows = Vec::with_capacity(l.div_ceil(plan.rows));
        for r0 in (0..l).step_by(plan.rows) {
            let r1 = (r0 + plan.rows).min(l);
            let qc = q.clone().slice([b0..b1, 0..1, r0..r1]);
            let mc = mask.as_ref().map(|m| {
                let ml = m.dims()[2];
                if ml == 1 { m.clone().slice([b0..b1]) } else { m.clone().slice([b0..b1, 0..1, r0..r1]) }
            });
            rows.push(product(qc, kb.clone(), vb.clone(), mc));
        }
        batches.push(Tensor::cat(rows, 2));
    }
    Tensor::cat(batches, 0).reshape([n, h, l, dv])
}

/// Whether a product of `batch_heads` (batch x heads) runs on the CPU's fused kernel (else the reference one).
pub fn cpu_takes_fused(batch_heads: usize) -> bool {
    batch_heads >= cpu_threads()
}

/// The CPU back-end's thread count (rayon's: `RAYON_NUM_THREADS`, else every core).
pub(crate) fn cpu_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    })
}

/// How [`attention`] computes each chunk.
#[derive(Clone, Copy)]
enum Path {
    Cube,
    Reference,
}

/// burn's fused attention: `softmax(q kᵀ · scale + mask) v`, the scale being `1 / divisor` (1 when the
/// caller scaled q itself).
fn fused(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, score_divisor: Option<f64>, mask: Option<Tensor<4>>) -> Tensor<4> {
    let options = AttentionModuleOptions {
        scale: Some(score_divisor.map_or(1.0, |divisor| 1.0 / divisor)),
        softcap: None,
        is_causal: false,
    };
    fused_attention(q, k, v, None, mask, options)
}

/// Keys from which unmasked CPU products take [`cpu_blocks`]. Measured on 2 cores (docs/PERFORMANCE.md):
/// at SD 1.5's 4,096-token level the exp dominates and the blocks win 3x (UNet step at 64x64 latents 18.0
/// -> 15.1 s); at 1,024 tokens and below, reading strided q/k/v into plain buffers and the small gemm calls
/// cost more than the exp saves (video UNet at 2 x 8 frames, 32x32: 37.8 s on flex's kernel, 41.2 s with
/// the blocks from 64 keys up), so flex's flash kernel keeps those.
pub const CPU_BLOCKS_MIN_KEYS: usize = 2048;

/// stepstone-kernels' CPU attention (exact softmax per block of query rows, vectorised exp) on unmasked
/// products: burn flex's flash kernel spends most of its time in libm's scalar `expf` (docs/PERFORMANCE.md).
/// The CPU back-end is f32, so the tensors are read and rebuilt as f32.
fn cpu_blocks(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, score_divisor: Option<f64>) -> Tensor<4> {
    let ([n, h, l, d], s, dv) = (q.dims(), k.dims()[2], v.dims()[3]);
    let device = q.device();
    let data = [q, k, v].map(|t| t.into_data().convert::<f32>());
    let dims = stepstone_kernels::AttentionDims { heads: n * h, queries: l, keys: s, dim: d, value_dim: dv };
    let scale = score_divisor.map_or(1.0, |divisor| 1.0 / divisor) as f32;
    let out = match (data[0].as_slice::<f32>(), data[1].as_slice::<f32>(), data[2].as_slice::<f32>()) {
        (Ok(qs), Ok(ks), Ok(vs)) => stepstone_kernels::attention(qs, ks, vs, dims, scale).ok(),
        _ => None,
    };
    match out {
        Some(out) => Tensor::from_data(burn::tensor::TensorData::new(out, [n, h, l, dv]), &device),
        // Not readable as f32 (the CPU back-end computes in f32, so not expected): burn's kernel takes it.
        None => {
            let [q, k, v] = data.map(|t| Tensor::from_data(t, &device));
            fused(q, k, v, score_divisor, None)
        }
    }
}

/// [`fused`] with the head sizes zero-padded to a multiple of [`CUBE_HEAD_MULTIPLE`]: zero columns of q and
/// k add nothing to q kᵀ, and zero columns of v give zero output columns, which are cut off.
fn fused_padded(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, score_divisor: Option<f64>) -> Tensor<4> {
    let (d, dv) = (q.dims()[3], v.dims()[3]);
    let pad = |t: Tensor<4>, size: usize| {
        let target = size.next_multiple_of(CUBE_HEAD_MULTIPLE);
        if target == size {
            return t;
        }
        let [a, b, c, _] = t.dims();
        let zeros = Tensor::<4>::zeros([a, b, c, target - size], &t.device()).cast(t.dtype());
        Tensor::cat(vec![t, zeros], 3)
    };
    let out = fused(pad(q, d), pad(k, d), pad(v, dv), score_divisor, None);
    let [a, b, c, padded] = out.dims();
    if padded == dv { out } else { out.slice([0..a, 0..b, 0..c, 0..dv]) }
}

/// The whole product at once: softmax(q kᵀ / divisor + mask) v.
fn scores_times_values(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    score_divisor: Option<f64>,
    mask: Option<Tensor<4>>,
) -> Tensor<4> {
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if let Some(divisor) = score_divisor {
        scores = scores.div_scalar(divisor);
    }
    if let Some(mask) = mask {
        scores = scores + mask;
    }
    softmax(scores, 3).matmul(v)
}

/// [`attention`] for projections laid out as diffusers and transformers keep them: `q` [N, L, H*d], `k` and
/// `v` [N, S, H*d] -> [N, L, H*d].
pub fn attention_packed(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    heads: usize,
    score_divisor: Option<f64>,
    mask: Option<Tensor<4>>,
) -> Tensor<3> {
    let [n, l, inner] = q.dims();
    let s = k.dims()[1];
    let d = inner / heads.max(1);
    let split = |t: Tensor<3>, len: usize| t.reshape([n, len, heads, d]).swap_dims(1, 2);
    let out = attention(split(q, l), split(k, s), split(v, s), score_divisor, mask);
    out.swap_dims(1, 2).reshape([n, l, inner])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    #[test]
    fn chunk_sizes_stay_within_the_budget() {
        // Fits: whole.
        assert_eq!(chunks(4, 10, 10, 4 * 10 * 10 * 4), Chunks { batch: 4, rows: 10 });
        // One (batch x head) fits: several of them at once.
        assert_eq!(chunks(8, 10, 10, 2 * 10 * 10 * 4), Chunks { batch: 2, rows: 10 });
        // Not even one: rows.
        assert_eq!(chunks(8, 100, 10, 7 * 10 * 4), Chunks { batch: 1, rows: 7 });
        // Nothing fits: one row at a time, never zero.
        assert_eq!(chunks(8, 100, 1000, 1), Chunks { batch: 1, rows: 1 });
        // SD 1.5 first level at 16 frames x CFG: 17 GB whole; 256 MB chunks.
        let c = chunks(32 * 8, 4096, 4096, DEFAULT_SCORE_BUDGET);
        assert!(c.batch * c.rows * 4096 * 4 <= DEFAULT_SCORE_BUDGET, "{c:?}");
        assert_eq!(c, Chunks { batch: 4, rows: 4096 });
    }

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let values = (a - b).abs().to_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "a difference is not finite");
        values.into_iter().fold(0.0, f32::max)
    }

    #[test]
    fn chunked_equals_whole_on_awkward_shapes() {
        let device = Device::flex();
        let rand = |dims: [usize; 4]| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        // Lengths that no chunk divides; masks of every broadcast shape the models use.
        let (n, h, l, s, d) = (3, 2, 37, 23, 5);
        let (q, k, v) = (rand([n, h, l, d]), rand([n, h, s, d]), rand([n, h, s, d]));
        let masks = [None, Some(rand([n, 1, 1, s])), Some(rand([1, 1, l, s])), Some(rand([n, h, l, s]))];
        for mask in masks {
            let whole = attention(q.clone(), k.clone(), v.clone(), Some(2.2), mask.clone());
            // Budgets that cut rows (one row, 5 rows, 11 rows) and batches (2 of the 6 at once).
            for budget in [1, 5 * s * 4, 11 * s * 4, 2 * l * s * 4] {
                let chunked =
                    with_score_budget(budget, || attention(q.clone(), k.clone(), v.clone(), Some(2.2), mask.clone()));
                assert_eq!(chunked.dims(), [n, h, l, d]);
                let diff = max_diff(whole.clone(), chunked);
                assert!(diff < 1e-5, "budget {budget}, mask {:?}: {diff}", mask.as_ref().map(|m| m.dims()));
            }
        }
        assert_eq!(score_budget(), DEFAULT_SCORE_BUDGET, "the budget is restored");
    }

    #[test]
    fn fused_and_padded_kernels_equal_the_reference() {
        let device = Device::flex();
        let rand = |dims: [usize; 4]| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        // Head sizes below, at and between multiples of the padding (SD 1.5 has 40, 80 and 160); keys
        // shorter and longer than the CPU kernel's tile (64) and than its naive-path limit.
        for (n, h, l, s, d, dv) in [(2, 3, 37, 23, 5, 7), (1, 2, 70, 130, 40, 40), (2, 1, 600, 520, 16, 16)] {
            let (q, k, v) = (rand([n, h, l, d]), rand([n, h, s, d]), rand([n, h, s, dv]));
            let masks = [None, Some(rand([n, 1, 1, s])), Some(rand([1, 1, l, s]))];
            for mask in masks {
                let reference = with_kernel(Kernel::Reference, || {
                    attention(q.clone(), k.clone(), v.clone(), Some(2.2), mask.clone())
                });
                let shape = mask.as_ref().map(|m| m.dims());
                // The kernel itself (attention() may route small batch x heads to the reference kernel).
                let fused = fused(q.clone(), k.clone(), v.clone(), Some(2.2), mask.clone());
                let diff = max_diff(reference.clone(), fused);
                assert!(diff < 1e-5, "fused, {:?}, mask {shape:?}: {diff}", (n, h, l, s, d, dv));
                if mask.is_none() {
                    let padded = fused_padded(q.clone(), k.clone(), v.clone(), Some(2.2));
                    assert_eq!(padded.dims(), [n, h, l, dv]);
                    let diff = max_diff(reference, padded);
                    assert!(diff < 1e-5, "padded, {:?}: {diff}", (n, h, l, s, d, dv));
                }
            }
        }
        assert_eq!(kernel(), Kernel::Fused, "the kernel is restored");
    }

    /// The CPU block kernel, reached through `attention` as the UNet reaches it (strided q, k and v from
    /// a head split; keys from [`CPU_BLOCKS_MIN_KEYS`] up, queries not a multiple of its block), equals the
    /// reference kernel; so does its direct call on a shape below the threshold.
    #[test]
    fn cpu_blocks_equal_the_reference() {
        let device = Device::flex();
        let rand = |dims: [usize; 4]| Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
        // 32 batch x heads: the block kernel's route on machines of up to 32 threads.
        let (n, h, l, s, d) = (4, 8, 133, CPU_BLOCKS_MIN_KEYS + 5, 8);
        // [n, tokens, h, d] swapped to [n, h, tokens, d]: not contiguous, as in the models.
        let split = |t: Tensor<4>| t.swap_dims(1, 2);
        let (q, k, v) = (split(rand([n, l, h, d])), split(rand([n, s, h, d])), split(rand([n, s, h, d])));
        let reference = with_kernel(Kernel::Reference, || attention(q.clone(), k.clone(), v.clone(), Some(2.9), None));
        let routed = attention(q.clone(), k.clone(), v.clone(), Some(2.9), None);
        let diff = max_diff(reference.clone(), routed);
        assert!(diff < 1e-5, "attention with {s} keys: {diff}");
        let direct = cpu_blocks(q, k, v, Some(2.9));
        assert!(max_diff(reference, direct) < 1e-5);
        let (q, k, v) = (rand([1, 2, 9, 5]), rand([1, 2, 31, 5]), rand([1, 2, 31, 6]));
        let reference = with_kernel(Kernel::Reference, || attention(q.clone(), k.clone(), v.clone(), None, None));
        let diff = max_diff(reference, cpu_blocks(q, k, v, None));
        assert!(diff < 1e-5, "31 keys: {diff}");
    }
}
